"""A runner run once per training seed: which seeds, where the results go, and the sweep's own record.

Scripts that repeat an analysis over the main job's seeds (`experiments/precision_seeds.py`,
`experiments/das_seeds.py`, `experiments/erasers_seeds.py`) nest a `SeedSweep` in their options, run it with
`per_seed` and end with `write_sweep_record`.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch

from leakage.io import atomic_write_json


@dataclass(frozen=True)
class SeedSweep:
    """The seeds and where results go.

    seeds: training seeds of the main job's model.
    out_dir: folder of the results.
    threads: torch threads.
    """

    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    out_dir: str = "figures"
    threads: int = 2


def write_sweep_record(path: str | Path, sweep: SeedSweep, command: str, seconds: float) -> Path:
    """The sweep's JSON at `path`: its command, seeds, wall time and machine (CPU, torch build, threads)."""
    return atomic_write_json(path, {
        "command": command, "seeds": list(sweep.seeds), "wall_seconds": seconds,
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "torch": torch.__version__, "torch_threads": sweep.threads}})


def per_seed(sweep: SeedSweep, spec_of: Callable[[int], Any], run: Callable, name: str, command: str,
             log: Callable[[str], None] = lambda _: None) -> tuple[pd.DataFrame, list]:
    """Run a runner (`run(spec, out, command=, log=)`) on `spec_of(seed)` for every seed of the sweep, writing
    each seed's files at `{out_dir}/{name}/seed{S}/{name}`; returns every row with its seed, and the records."""
    frames, records = [], []
    for seed in sweep.seeds:
        spec = spec_of(seed)
        log(f"seed {seed}: {spec.checkpoint}")
        record = run(spec, Path(sweep.out_dir) / name / f"seed{seed}" / name, command=command, log=log)
        frames.append(record.rows.assign(seed=seed))
        records.append(record)
    return pd.concat(frames, ignore_index=True), records


MAIN_JOB_CHECKPOINT = "runs/reproduce-passcode4-fast-seed{seed}/final"
"""The main job's model of seed {seed} (`leakage reproduce --seeds 5` trains them)."""


def main_job_causal_spec(spec_class):
    """A causal runner's spec (a `CausalSpec` subclass) on the main job's models: their checkpoint pattern, the
    4-block passcode task with the passcode in block 1, 256 twin pairs (the main job's causal stage size)."""
    from leakage.analysis.twins import CausalExperiment
    from leakage.training.tasks import TaskConfig

    return spec_class(MAIN_JOB_CHECKPOINT, TaskConfig(task="passcode", n_blocks=4, passcode_block=1),
                      experiment=CausalExperiment(n=256))


CAUSAL_SKIP = ("spec.checkpoint", "spec.experiment.seed", "spec.eviction.restart", "spec.eviction.max_block_tokens",
               "spec.task.short_block_rate", "spec.task.passcode_blocks")
"""The flags a causal seed sweep leaves out: the checkpoint and seed come from the sweep, the rest are fixed."""


def causal_spec_of_seed(spec, seed: int):
    """`spec` (a `CausalSpec` subclass) for the model and examples of training seed `seed`."""
    return replace(spec, checkpoint=spec.checkpoint.format(seed=seed), experiment=replace(spec.experiment, seed=seed))
