"""A runner run once per training seed: which seeds, where the results go, and the sweep's own record.

Scripts that repeat an analysis over the main job's seeds (`experiments/precision_seeds.py`,
`experiments/das_seeds.py`) nest a `SeedSweep` in their options and end with `write_sweep_record`.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

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
