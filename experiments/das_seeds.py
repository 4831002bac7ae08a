"""Distributed alignment search on the retained KV, across the main job's training seeds.

    python experiments/das_seeds.py --seeds 0,1,2,3,4

For each seed S, `leakage.analysis.das.run` (what `leakage das` runs) on the main job's model of that seed
(`runs/reproduce-passcode4-fast-seed{S}/final`, trained by `leakage reproduce --seeds 5`), with twins and
subspaces seeded by S; its CSV, JSON and figure go to `{out_dir}/das/seed{S}/`. Then, across seeds,
`{out_dir}/das.csv` (every row, with its seed), `das_summary.csv` (one row per seed: the references, the top
cell, its IIA by k and smallest carrying k, the placebos, grafts and angles; then the median and range over
seeds) and the figure `das.png`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pandas as pd
import torch

from leakage.analysis import das
from leakage.flags import parse
from leakage.io import atomic_write_text
from leakage.plotting import plot_das
from leakage.provenance import script_command
from leakage.sweeps import (CAUSAL_SKIP, SeedSweep, causal_spec_of_seed, main_job_causal_spec, per_seed,
                            write_sweep_record)


@dataclass(frozen=True)
class Options:
    """What each seed runs and the sweep.

    spec: what each seed's run measures; its checkpoint names the model of seed {seed}.
    sweep: the seeds, the results' folder and torch threads.
    """

    spec: das.DasSpec = main_job_causal_spec(das.DasSpec)
    sweep: SeedSweep = SeedSweep()


def seed_row(seed: int, rows: pd.DataFrame, results: dict) -> dict:
    """One seed's headline numbers, flat."""
    row = {"seed": seed, "iia_clean": results["iia_clean"], "iia_twin_cache": results["iia_twin_cache"],
           "cells_searched": results["cells_searched"]}
    whole = rows[(rows.experiment == "das") & rows.whole_cell.astype(bool)]
    row["cells_whole_iia_above_0.1"] = int((whole.value > 0.1).sum())
    top = results.get("top_cell")
    if top:
        row.update(top_cell=f"L{top['layer']} H{top['kv_head']} {top['which']} {top['site']}",
                   top_whole_iia=top["whole_iia"], smallest_carrying_k=top["smallest_carrying_k"],
                   **{f"iia_k{k}": v for k, v in top["iia_by_k"].items()})
        for part in ("placebo", "graft"):
            row.update({f"{part}_{name}": value for name, value in results[part].items()})
        for angle in rows[rows.experiment == "angle"].itertuples():
            name = f"angle_{angle.intervention}_{angle.measure.split('_')[0]}"
            row.update({name: angle.value, f"{name}_random_p05": angle.random_p05,
                        f"{name}_random_p50": angle.random_p50})
    return row


def summary(seeds: pd.DataFrame) -> pd.DataFrame:
    """The per-seed rows, then the median, min and max over seeds of every numeric column."""
    numeric = seeds.drop(columns=["seed"]).select_dtypes("number")
    spread = pd.DataFrame([{"seed": name, **getattr(numeric, name)().to_dict()} for name in ("median", "min", "max")])
    return pd.concat([seeds.assign(seed=seeds.seed.astype(str)), spread], ignore_index=True)


def main() -> None:
    options = parse(Options, description=__doc__, rename={"spec.task.n_blocks": "blocks"}, skip=CAUSAL_SKIP)
    torch.set_num_threads(options.sweep.threads)
    out = Path(options.sweep.out_dir)
    command = script_command("experiments/das_seeds.py")
    start = time.perf_counter()
    rows, records = per_seed(options.sweep, partial(causal_spec_of_seed, options.spec), das.run, "das",
                             command, print)
    seeds = [seed_row(seed, record.rows, record.results) for seed, record in zip(options.sweep.seeds, records)]
    table = summary(pd.DataFrame(seeds))
    atomic_write_text(out / "das.csv", rows.assign(command=command).to_csv(index=False))
    atomic_write_text(out / "das_summary.csv", table.assign(command=command).to_csv(index=False))
    plot_das(rows, out / "das.png", title=f"DAS on the retained KV, main job's model, {len(options.sweep.seeds)} seeds")
    seconds = time.perf_counter() - start
    write_sweep_record(out / "das_seeds.json", options.sweep, command, seconds)
    print(table.round(3).T.to_string())
    print(f"{len(options.sweep.seeds)} seeds in {seconds:.0f} s; wrote {out / 'das.csv'}, das_summary.csv, das.png")


if __name__ == "__main__":
    main()
