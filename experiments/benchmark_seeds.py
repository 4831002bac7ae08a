"""The leakage benchmark across eviction methods, on the main job's models of several training seeds.

    python experiments/benchmark_seeds.py --seeds 0,1,2

For each seed S, `leakage.analysis.benchmark.run` (what `leakage benchmark` runs) on the main job's model of that
seed (`runs/reproduce-passcode4-fast-seed{S}/final`), with examples and probes seeded by S, at Memento's
budget and at every extra press budget in `--budgets`; its CSV, JSON and figure go to
`{out_dir}/benchmark/seed{S}/` (`benchmark.*`, and `benchmark_budget{B}.*` per extra budget). `--checkpoint`
names another model per seed (`{seed}` in the path), e.g. a model trained with full attention on the same task
(`--models` names them in the figure's title), or one trained with gist mementos (`--gist-tokens 3`: the `gist` method
in place of `memento`). Then, across seeds, `{out_dir}/benchmark.csv` (every row, with its seed and
budget), `benchmark_summary.csv` (per method and budget: median, min and max over seeds of every measure, and
in how many seeds the answer beats restart's with an interval above zero) and the figure `benchmark.png`
(leak against KV budget).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import torch

from leakage.analysis import benchmark
from leakage.analysis.benchmark import PRESSES, BenchmarkSpec
from leakage.flags import parse
from leakage.io import atomic_write_text
from leakage.plotting import plot_benchmark
from leakage.sweeps import MAIN_JOB_CHECKPOINT, SeedSweep, write_sweep_record
from leakage.provenance import script_command

MEASURES = ("answer_accuracy", "answer_over_restart", "sums_accuracy", "probe_accuracy", "probe_bits",
            "passcode_retained", "nearest_retained", "kv_auc_share")


@dataclass(frozen=True)
class Options:
    """What each seed runs and the sweep.

    spec: what each seed's run measures at Memento's budget; its checkpoint names the model of seed {seed}.
    budgets: extra KV budgets (fractions of the positions before each moment) the presses also run at.
    models: what the checkpoints are, for the figure's title.
    sweep: the seeds, the results' folder and torch threads.
    """

    spec: BenchmarkSpec = BenchmarkSpec(MAIN_JOB_CHECKPOINT)
    budgets: tuple[float, ...] = ()
    models: str = "main job's model"
    sweep: SeedSweep = SeedSweep(seeds=(0, 1, 2))


def summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Per method and budget, over seeds: median, min and max of every measure; seeds whose answer beats restart's
    with a 95% interval above zero."""
    out = []
    for (method, budget), group in rows.groupby(["method", "budget"], sort=False):
        entry = {"method": method, "budget": budget, "seeds": len(group),
                 "probe_budget": int(group.probe_budget.median()),
                 "seeds_above_restart": int((group.over_restart_low > 0).sum())}
        for measure in MEASURES:
            entry.update({f"{measure}_median": group[measure].median(), f"{measure}_min": group[measure].min(),
                          f"{measure}_max": group[measure].max()})
        out.append(entry)
    return pd.DataFrame(out)


def main() -> None:
    options = parse(Options, description=__doc__, rename={"spec.task.n_blocks": "blocks"},
                    skip=("spec.seed", "spec.budget", "spec.eviction.restart",
                          "spec.eviction.max_block_tokens", "spec.task.short_block_rate", "spec.task.passcode_blocks"))
    torch.set_num_threads(options.sweep.threads)
    out = Path(options.sweep.out_dir)
    command = script_command("experiments/benchmark_seeds.py")
    start = time.perf_counter()
    frames = []
    for seed in options.sweep.seeds:
        spec = replace(options.spec, checkpoint=options.spec.checkpoint.format(seed=seed), seed=seed)
        print(f"seed {seed}: {spec.checkpoint}")
        runs = [("benchmark", spec)] + [(f"benchmark_budget{b:g}", replace(spec, budget=b, methods=tuple(
            m for m in spec.method_names if m in PRESSES))) for b in options.budgets]
        for name, run_spec in runs:
            record = benchmark.run(run_spec, out / "benchmark" / f"seed{seed}" / name, command=command, log=print)
            rows = record.rows.assign(seed=seed)
            frames.append(rows if run_spec.budget is None else rows[rows.method.isin(PRESSES)])
    rows = pd.concat(frames, ignore_index=True)
    table = summary(rows)
    atomic_write_text(out / "benchmark.csv", rows.assign(command=command).to_csv(index=False))
    atomic_write_text(out / "benchmark_summary.csv", table.assign(command=command).to_csv(index=False))
    plot_benchmark(rows, out / "benchmark.png",
                   title=f"leak vs KV budget across eviction methods, {options.models}, {len(options.sweep.seeds)} seeds")
    seconds = time.perf_counter() - start
    write_sweep_record(out / "benchmark_seeds.json", options.sweep, command, seconds)
    print(table.round(3).T.to_string())
    print(f"{len(options.sweep.seeds)} seeds in {seconds:.0f} s; wrote {out / 'benchmark.csv'}, benchmark_summary.csv, "
          "benchmark.png")


if __name__ == "__main__":
    main()
