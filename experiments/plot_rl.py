"""Redraw the RL figure from a `leakage rl --report STEM` result (STEM.csv and STEM_metrics.jsonl).

    python experiments/plot_rl.py figures/rl_digits_fast figures/rl_passcode_fast
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from leakage.plotting import plot_rl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stems", nargs="+", help="report path stems, e.g. figures/rl_digits_fast")
    for stem in map(Path, parser.parse_args().stems):
        rows = pd.read_csv(stem.with_suffix(".csv"))
        metrics = [json.loads(line) for line in (stem.parent / f"{stem.name}_metrics.jsonl").read_text().splitlines()]
        config = json.loads(stem.with_suffix(".json").read_text())
        title = f"CISPO on {config['rl']['task']} ({config['rl']['preset']}) from {config['from']}"
        print(f"wrote {plot_rl(metrics, rows, stem.with_suffix('.png'), title)}")


if __name__ == "__main__":
    main()
