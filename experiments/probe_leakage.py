"""The full passcode-probe sweep on a trained `leakage train` run, timed: every condition and control,
per layer, the leak spectrum and bf16, the keep_last_n_blocks sweep and the checkpoint sweep.

    python experiments/probe_leakage.py runs/digits-fast/final --name digits_fast [leakage probe flags]

Runs the probe runner (`leakage.analysis.probing.run`, what `leakage probe` runs) with the flags given,
writing `figures/probe_{name}.csv` (one row per probe: condition, distance, site, layer, accuracy, 95%
interval, chance, the paper's number where it has one, the command), `.json` (the spec, weights and
timings) and figures `probe_{name}_conditions.png` (Fig. 10), `_layers.png` (Table 4), `_sweeps.png`
(Fig. 13 and the position-kind table); then `bench_probe_{name}.json`: the wall time of the whole sweep
on this machine, when each phase began, and where the time went (`time_by_kind`: loading the model and
building the traces, capturing keys and values, scoring checkpoints' task accuracy, and fitting probes,
which is every other phase).
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

from leakage.analysis import probing
from leakage.analysis.record import seconds_by_kind
from leakage.flags import parse
from leakage.io import atomic_write_json
from leakage.provenance import script_command


@dataclass(frozen=True)
class Options:
    """The sweep and where it goes.

    name: result name: figures/probe_{name}.csv and bench_probe_{name}.json.
    threads: torch threads.
    out_dir: folder of the results.
    """

    spec: probing.ProbeSpec
    name: str = "digits_fast"
    threads: int = 2
    out_dir: str = "figures"


def main() -> None:
    options = parse(Options, description=__doc__, rename={"spec.experiment.n_blocks": "blocks"},
                    skip=("spec.eviction.restart", "spec.eviction.max_block_tokens",
                          "spec.eviction.summary_end_sees_block"))
    torch.set_num_threads(options.threads)
    out = Path(options.out_dir)
    command = script_command("experiments/probe_leakage.py")
    record = probing.run(options.spec, out / f"probe_{options.name}", command=command, log=print)
    atomic_write_json(out / f"bench_probe_{options.name}.json", {
        "phases": record.phases, "command": command,
        "time_by_kind": seconds_by_kind(record.phases, record.seconds, ("capturing", "scoring"), rest="fitting"),
        "wall_seconds": record.seconds, "goal_seconds": 600,
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "torch_threads": options.threads}})
    print(f"sweep done in {record.seconds:.0f} s (goal: 600 s); wrote " + ", ".join(map(str, record.files)))


if __name__ == "__main__":
    main()
