"""The passcode channel at each precision, across the main job's training seeds.

    python experiments/precision_seeds.py --seeds 0,1,2,3,4

For each seed S, `leakage.analysis.precision_channel.run` (what `leakage precision` runs) on the main job's
model of that seed (`runs/reproduce-passcode4-fast-seed{S}/final`, trained by `leakage reproduce --seeds 5`),
with examples, traces and probe seeded by S as the main job's probe was; its CSV, JSON and figure go to
`{out_dir}/precision/seed{S}/`. Then, across seeds, `{out_dir}/precision_channel.csv` (every row, with its
seed), `precision_summary.csv` (per precision and measure: seeds, median, min, max, and in how many seeds
the interval lies beyond its null: a statement about seeds) and the figure `precision_channel.png`.
`--checkpoint` names another model per seed (`{seed}` in the path), e.g. one trained in bf16 mixed precision
(`leakage train ... --preset fast-bf16`), and `--models` says in the figure's title what they are.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import torch

from leakage.analysis import precision_channel
from leakage.flags import parse
from leakage.io import atomic_write_text
from leakage.plotting import plot_precision_channel
from leakage.sweeps import SeedSweep, per_seed, write_sweep_record
from leakage.provenance import script_command

CHANCE = 0.1  # a digit


@dataclass(frozen=True)
class Options:
    """What each seed runs and the sweep.

    spec: what each seed's run measures; its checkpoint names the model of seed {seed}.
    models: what the checkpoints are, for the figure's title.
    sweep: the seeds, the results' folder and torch threads.
    """

    spec: precision_channel.PrecisionSpec = precision_channel.PrecisionSpec("runs/reproduce-passcode4-fast-seed{seed}/final")
    models: str = "main job's model"
    sweep: SeedSweep = SeedSweep()


def summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Per precision and measure (and probe budget, for learning curves), across seeds: the value (an accuracy,
    the restart drop's points, or a layer's patching effect), median, min, max, and the seeds whose 95% interval
    lies beyond the null: above chance (accuracies), below zero (restart drop), above zero (patching effects)."""
    keys = ["precision", "measure"] + (["budget"] if "budget" in rows else [])
    out = []
    for key, group in rows.groupby(keys, sort=False, dropna=False):
        precision, measure = key[:2]
        entry = {"precision": precision, "measure": measure, "seeds": len(group)}
        if "budget" in rows and pd.notna(key[2]):
            entry["budget"] = int(key[2])
        if measure == "restart_drop":
            value, beyond, null = group["points"], group.ci95_high < 0, "no drop (interval below 0)"
        elif measure.startswith("patch_layer"):
            value, beyond, null = group["effect"], group.ci95_low > 0, "no effect (interval above 0)"
        else:
            value, beyond, null = group["accuracy"], group.ci95_low > CHANCE, "chance (interval above 10%)"
        entry.update(median=value.median(), min=value.min(), max=value.max(), seeds_beyond_null=int(beyond.sum()),
                     null=null)
        if "bits_leaked" in group and group.bits_leaked.notna().any():
            entry.update(bits_median=group.bits_leaked.median(), bits_min=group.bits_leaked.min(),
                         bits_max=group.bits_leaked.max())
        if "probe_budget" in group and group.probe_budget.notna().any():
            entry["probe_budget"] = int(group.probe_budget.iloc[0])
        out.append(entry)
    return pd.DataFrame(out)


def main() -> None:
    options = parse(Options, description=__doc__, rename={"spec.task.n_blocks": "blocks"},
                    skip=("spec.seed", "spec.eviction.restart", "spec.eviction.max_block_tokens",
                          "spec.task.short_block_rate", "spec.task.passcode_blocks"))
    torch.set_num_threads(options.sweep.threads)
    out = Path(options.sweep.out_dir)
    command = script_command("experiments/precision_seeds.py")
    start = time.perf_counter()
    rows, _ = per_seed(options.sweep, lambda seed: replace(options.spec, checkpoint=options.spec.checkpoint.format(
        seed=seed), seed=seed), precision_channel.run, "precision", command, print)
    table = summary(rows)
    atomic_write_text(out / "precision_channel.csv", rows.assign(command=command).to_csv(index=False))
    atomic_write_text(out / "precision_summary.csv", table.assign(command=command).to_csv(index=False))
    plot_precision_channel(rows, out / "precision_channel.png",
                           title=f"the passcode channel at each precision, {options.models}, "
                                 f"{len(options.sweep.seeds)} seeds")
    seconds = time.perf_counter() - start
    write_sweep_record(out / "precision_seeds.json", options.sweep, command, seconds)
    print(table.to_string(index=False, float_format="%.3f"))
    print(f"{len(options.sweep.seeds)} seeds in {seconds:.0f} s; wrote {out / 'precision_channel.csv'}, "
          "precision_summary.csv, precision_channel.png")


if __name__ == "__main__":
    main()
