"""The passcode probe on a trained checkpoint: every condition, per layer, with figures and timing.

    python experiments/probe_leakage.py --checkpoint runs/digits-fast/final --n 22000 --out-dir figures

Writes `probe_{name}.csv` (one row per probe: condition, distance, site, layer, accuracy, 95% interval,
chance, the paper's number where it has one, the command), `probe_{name}_conditions.png` (Fig. 10 and the
distance panel of Fig. 13), `probe_{name}_layers.png` (Table 4 as a figure) and `bench_probe_{name}.json`
(wall time of the whole run on this machine).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from leakage.config import EvictionConfig, ProbeExperiment
from leakage.io import atomic_write_json, atomic_write_text
from leakage.model import load_model, untrained_like
from leakage.plotting import plot_probe_conditions, plot_probe_layers
from leakage.probe_data import synthetic_traces
from leakage.probing import probe_conditions
from leakage.tasks import TaskConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="runs/digits-fast/final")
    parser.add_argument("--task", default="digits", help="the synthetic task whose traces are probed")
    parser.add_argument("--name", default="digits_fast")
    parser.add_argument("--n", type=int, default=22_000)
    parser.add_argument("--kind", default="mlp")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out-dir", default="figures")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model, tokenizer = load_model(args.checkpoint)
    experiment = ProbeExperiment(kind=args.kind)
    task = TaskConfig(task=args.task, n_blocks=experiment.n_blocks, passcode_block=experiment.passcode_block)
    traces = synthetic_traces(task, tokenizer, args.n)
    rows = probe_conditions(model, tokenizer, traces, experiment, EvictionConfig(),
                            random_model=untrained_like(model, experiment.seed), log=print)
    command = "python experiments/probe_leakage.py " + " ".join(sys.argv[1:])
    out = Path(args.out_dir)
    table = pd.DataFrame(rows).assign(command=command, checkpoint=args.checkpoint, n_traces=len(traces))
    atomic_write_text(out / f"probe_{args.name}.csv", table.drop(columns=["per_digit"]).to_csv(index=False))
    title = f"passcode probe ({args.kind}), {args.checkpoint}, {len(traces):,} traces"
    plot_probe_conditions(rows, out / f"probe_{args.name}_conditions.png", title=title)
    plot_probe_layers(rows, out / f"probe_{args.name}_layers.png", title=title)
    atomic_write_json(out / f"bench_probe_{args.name}.json", {
        "command": command, "wall_seconds": time.perf_counter() - started, "probes": len(rows),
        "traces": len(traces), "machine": {"processor": platform.processor() or platform.machine(),
                                           "torch_threads": args.threads}})
    with pd.option_context("display.width", 200, "display.max_rows", 200, "display.precision", 3):
        print(table[["condition", "distance", "layer", "accuracy", "ci95_low", "ci95_high", "paper_toy"]].to_string())
    print(f"done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
