"""Redraw the causal experiments' figures from their committed CSVs (no model is run).

    python experiments/plot_causal.py passcode_fast

Reads `figures/{patch,ablate,erase}_{name}.csv` (whichever exist) and writes the PNG beside each.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from leakage.flags import parse
from leakage.plotting import plot_ablation, plot_erasure, plot_patching

PLOTS = {"patch": plot_patching, "ablate": plot_ablation, "erase": plot_erasure}


@dataclass(frozen=True)
class Options:
    """What to redraw.

    names: result names, e.g. passcode_fast.
    figures_dir: folder of the CSVs (and the figures).
    """

    names: tuple[str, ...]
    figures_dir: str = "figures"


def run() -> None:
    args = parse(Options, description=__doc__)
    for name in args.names:
        for command, plot in PLOTS.items():
            path = Path(args.figures_dir) / f"{command}_{name}.csv"
            if path.is_file():
                plot(pd.read_csv(path), path.with_suffix(".png"), f"{name.replace('_', '-')}: {command}")
                print(f"wrote {path.with_suffix('.png')}")


if __name__ == "__main__":
    run()
