"""The full passcode-probe sweep on a trained `leakage train` run, timed: every condition and control,
per layer, the leak spectrum and bf16, the keep_last_n_blocks sweep and the checkpoint sweep.

    python experiments/probe_leakage.py --checkpoint runs/digits-fast/final --name digits_fast

Runs `leakage probe CHECKPOINT --out figures/probe_{name}.csv [extra flags]` (one row per probe:
condition, distance, site, layer, accuracy, 95% interval, chance, the paper's number where it has one,
the command; figures `probe_{name}_conditions.png` (Fig. 10), `_layers.png` (Table 4), `_sweeps.png`
(Fig. 13 and the position-kind table)) and writes `bench_probe_{name}.json`: the wall time of the
whole sweep on this machine, and when each phase began. Flags after `--` go to `leakage probe` unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from leakage.cli import main as leakage
from leakage.io import atomic_write_json


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="runs/digits-fast/final")
    parser.add_argument("--name", default="digits_fast")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out-dir", default="figures")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    torch.set_num_threads(args.threads)
    out = Path(args.out_dir)
    argv = ["probe", args.checkpoint, "--out", str(out / f"probe_{args.name}.csv"), *extra]
    started = time.perf_counter()
    status = leakage(argv)
    seconds = time.perf_counter() - started
    if status == 0:
        run = json.loads((out / f"probe_{args.name}.json").read_text())
        atomic_write_json(out / f"bench_probe_{args.name}.json", {"phases": run["phases"],
            "command": "python experiments/probe_leakage.py " + " ".join(sys.argv[1:]),
            "leakage_command": "leakage " + " ".join(argv), "wall_seconds": seconds, "goal_seconds": 600,
            "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                        "torch_threads": args.threads}})
        print(f"sweep done in {seconds:.0f} s (goal: 600 s)")
    sys.exit(status)


if __name__ == "__main__":
    run()
