"""Capacity of the implicit KV channel against distance: answer-digit accuracy and bits per passcode of
passcode models whose passcode sits 1, 2 or 4 mementos before the answer, under memento, restart and
full-attention decoding. Each checkpoint is evaluated on its own task (`config.json` of its run folder).

    for d in 1 2 4; do leakage train --task passcode --blocks 4 --passcode-block $((4 - d)) --out runs/passcode4-d$d-fast; done
    python experiments/capacity.py runs/passcode4-d1-fast runs/passcode4-d2-fast runs/passcode4-d4-fast

Writes `figures/capacity_passcode4_fast.csv` (one row per checkpoint and decoding, Wilson 95% intervals,
bits = digits x log2(10) x (accuracy - chance) / (1 - chance)), the config as JSON and the figure beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from leakage.causal import capacity_rows
from leakage.config import EvictionConfig
from leakage.io import atomic_write_json, atomic_write_text
from leakage.model import load_model
from leakage.plotting import plot_capacity
from leakage.tasks import TaskConfig


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="`leakage train` run folders of passcode models")
    parser.add_argument("--n", type=int, default=256, help="validation examples per model")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="figures/capacity_passcode4_fast.csv")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started, rows, tasks = time.perf_counter(), [], {}
    eviction = EvictionConfig()
    for run_dir in args.runs:
        config = json.loads((Path(run_dir) / "config.json").read_text())
        task = TaskConfig(**{**config["task"], "passcode_blocks": tuple(config["task"].get("passcode_blocks", ()))})
        model, tokenizer = load_model(Path(run_dir) / "final")
        found = [{"run": run_dir, **row} for row in capacity_rows(model, tokenizer, task, args.n, args.seed, eviction)]
        rows += found
        tasks[run_dir] = config["task"]
        print(f"{run_dir}: distance {found[0]['distance']}: " +
              ", ".join(f"{r['decoding']} {r['accuracy']:.3f}" for r in found))
    frame = pd.DataFrame(rows)
    command = "python experiments/capacity.py " + " ".join(sys.argv[1:])
    frame.insert(0, "command", command)
    out = Path(args.out)
    atomic_write_text(out, frame.to_csv(index=False))
    atomic_write_json(out.with_suffix(".json"), {"command": command, "tasks": tasks, "eviction": vars(eviction),
                                                 "n": args.n, "seed": args.seed,
                                                 "seconds": time.perf_counter() - started})
    plot_capacity(frame, out.with_suffix(".png"), "channel capacity against distance (passcode models)")
    print(frame.drop(columns="command").to_string(index=False, float_format="%.3f"))
    print(f"wrote {out}, {out.with_suffix('.json')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    run()
