"""Every eraser of the channel on one curve, across the main job's training seeds.

    python experiments/erasers_seeds.py --seeds 0,1,2,3,4

For each seed S, `leakage.analysis.erasers.run` (what `leakage erasers` runs) on the main job's model of that
seed (`runs/reproduce-passcode4-fast-seed{S}/final`, trained by `leakage reproduce --seeds 5`), with
examples, twins, erasers, DAS subspaces and probes seeded by S; its CSV, JSON and figure go to
`{out_dir}/erasers/seed{S}/`. Then, across seeds, `{out_dir}/erasers.csv` (every row, with its seed),
`erasers_summary.csv` (per eraser: median, min and max over seeds of the answer, the running sums, the probe
and what each removes or costs against no eraser) and the figure `erasers.png`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pandas as pd
import torch

from leakage.analysis import erasers
from leakage.analysis.probe import ProbeConfig
from leakage.flags import parse
from leakage.io import atomic_write_text
from leakage.plotting import plot_erasers
from leakage.provenance import script_command
from leakage.sweeps import (CAUSAL_SKIP, SeedSweep, causal_spec_of_seed, main_job_causal_spec, per_seed,
                            write_sweep_record)

MEASURES = ("answer_accuracy", "sums_accuracy", "probe_accuracy", "probe_bits", "answer_removed", "sums_lost",
            "bits_removed", "twin_gap")


@dataclass(frozen=True)
class Options:
    """What each seed runs and the sweep.

    spec: what each seed's run measures; its checkpoint names the model of seed {seed}.
    sweep: the seeds, the results' folder and torch threads.
    probe_whiten: the probe whitens its inputs (`ProbeConfig`'s default); --no-probe-whiten standardises each
        feature instead.
    """

    spec: erasers.ErasersSpec = main_job_causal_spec(erasers.ErasersSpec)
    sweep: SeedSweep = SeedSweep()
    probe_whiten: bool = True


def summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Per eraser, over seeds: the median, min and max of every measure."""
    curve = rows[rows.experiment == "eraser"]
    out = []
    for name, group in curve.groupby("eraser", sort=False):
        entry = {"eraser": name, "seeds": len(group), "probe_budget": int(group.probe_budget.median())}
        for measure in MEASURES:
            if measure in group:
                entry.update({f"{measure}_median": group[measure].median(), f"{measure}_min": group[measure].min(),
                              f"{measure}_max": group[measure].max()})
        out.append(entry)
    return pd.DataFrame(out)


def main() -> None:
    options = parse(Options, description=__doc__, rename={"spec.task.n_blocks": "blocks"}, skip=CAUSAL_SKIP)
    torch.set_num_threads(options.sweep.threads)
    out = Path(options.sweep.out_dir)
    command = script_command("experiments/erasers_seeds.py")
    start = time.perf_counter()
    run = partial(erasers.run, probe=ProbeConfig(whiten=options.probe_whiten))
    rows, _ = per_seed(options.sweep, partial(causal_spec_of_seed, options.spec), run, "erasers", command, print)
    table = summary(rows)
    atomic_write_text(out / "erasers.csv", rows.assign(command=command).to_csv(index=False))
    atomic_write_text(out / "erasers_summary.csv", table.assign(command=command).to_csv(index=False))
    plot_erasers(rows, out / "erasers.png",
                 title=f"erasers of the channel, main job's model, {len(options.sweep.seeds)} seeds")
    seconds = time.perf_counter() - start
    write_sweep_record(out / "erasers_seeds.json", options.sweep, command, seconds)
    print(table.round(3).T.to_string())
    print(f"{len(options.sweep.seeds)} seeds in {seconds:.0f} s; wrote {out / 'erasers.csv'}, erasers_summary.csv, "
          "erasers.png")


if __name__ == "__main__":
    main()
