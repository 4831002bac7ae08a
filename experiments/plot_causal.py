"""Redraw the causal experiments' figures from their committed CSVs (no model is run).

    python experiments/plot_causal.py passcode_fast

Reads `figures/{patch,ablate,erase}_{name}.csv` (whichever exist) and writes the PNG beside each.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from leakage.plotting import plot_ablation, plot_erasure, plot_patching

PLOTS = {"patch": plot_patching, "ablate": plot_ablation, "erase": plot_erasure}


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="+", help="result names, e.g. passcode_fast")
    parser.add_argument("--figures-dir", default="figures")
    args = parser.parse_args()
    for name in args.names:
        for command, plot in PLOTS.items():
            path = Path(args.figures_dir) / f"{command}_{name}.csv"
            if path.is_file():
                plot(pd.read_csv(path), path.with_suffix(".png"), f"{name.replace('_', '-')}: {command}")
                print(f"wrote {path.with_suffix('.png')}")


if __name__ == "__main__":
    run()
