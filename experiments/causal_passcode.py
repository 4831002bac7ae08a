"""The causal experiments on a passcode checkpoint, one after another: KV patching maps, the KV ablation
sweep and the LEACE erasure curve.

    python experiments/causal_passcode.py runs/passcode-fast/final --name passcode_fast [--n 256 ...]

Runs the runners of `leakage patch|ablate|erase` (`leakage.analysis.patch_maps`, `ablation`, `erasure`) on
one spec (the flags of those commands), writing `figures/{patch,ablate,erase}_{name}.csv` (rows with 95%
intervals and the command), `.json` (spec, headline results, weights, timings) and a figure beside each,
and prints each one's wall time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from leakage.analysis import ablation, erasure, patch_maps
from leakage.analysis.twins import CausalSpec
from leakage.flags import parse
from leakage.provenance import script_command

RUNNERS = {"patch": patch_maps, "ablate": ablation, "erase": erasure}


@dataclass(frozen=True)
class Options:
    """Which experiments, and where they go.

    name: result name: figures/{patch,ablate,erase}_{name}.csv.
    commands: comma-separated, from patch, ablate, erase.
    threads: torch threads.
    out_dir: folder of the results.
    """

    spec: CausalSpec
    name: str = "passcode_fast"
    commands: tuple[str, ...] = ("patch", "ablate", "erase")
    threads: int = 2
    out_dir: str = "figures"


def main() -> None:
    options = parse(Options, description=__doc__, rename={"spec.task.n_blocks": "blocks"},
                    skip=("spec.task.short_block_rate", "spec.task.passcode_blocks", "spec.eviction.restart",
                          "spec.eviction.max_block_tokens"))
    torch.set_num_threads(options.threads)
    command = script_command("experiments/causal_passcode.py")
    for name in options.commands:
        runner = RUNNERS[name]
        extra = {"progress": tqdm} if name != "erase" else {}
        record = runner.run(options.spec, Path(options.out_dir) / f"{name}_{options.name}", command=command,
                            log=print, **extra)
        print(f"{name}: {record.seconds:.0f} s; wrote " + ", ".join(map(str, record.files)))


if __name__ == "__main__":
    main()
