"""The causal experiments on a passcode checkpoint, one after another: KV patching maps, the KV ablation
sweep and the LEACE erasure curve.

    python experiments/causal_passcode.py --checkpoint runs/passcode-fast/final --name passcode_fast

Runs `leakage patch|ablate|erase CHECKPOINT --out figures/{patch,ablate,erase}_{name}.csv [extra flags]`
(CSV rows with 95% intervals and the command; the run's config as JSON and a figure beside each) and
prints each command's wall time. Flags after `--` go to every command unchanged (e.g. `-- --n 256`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from leakage.cli import main as leakage


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="runs/passcode-fast/final")
    parser.add_argument("--name", default="passcode_fast")
    parser.add_argument("--commands", default="patch,ablate,erase")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out-dir", default="figures")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    torch.set_num_threads(args.threads)
    failed = 0
    for command in args.commands.split(","):
        started = time.perf_counter()
        status = leakage([command, args.checkpoint, "--out", str(Path(args.out_dir) / f"{command}_{args.name}.csv"),
                          *extra])
        print(f"{command}: exit {status} after {time.perf_counter() - started:.0f} s")
        failed |= status
    sys.exit(failed)


if __name__ == "__main__":
    run()
