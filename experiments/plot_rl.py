"""Redraw the RL figure from a `leakage rl --report STEM` result (STEM.csv and STEM_metrics.jsonl).

    python experiments/plot_rl.py figures/rl_digits_fast figures/rl_passcode_fast
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from leakage.flags import parse
from leakage.plotting import plot_rl


@dataclass(frozen=True)
class Options:
    """What to redraw.

    stems: report path stems, e.g. figures/rl_digits_fast.
    """

    stems: tuple[str, ...]


def main() -> None:
    for stem in map(Path, parse(Options, description=__doc__).stems):
        rows = pd.read_csv(stem.with_suffix(".csv"))
        metrics = [json.loads(line) for line in (stem.parent / f"{stem.name}_metrics.jsonl").read_text().splitlines()]
        config = json.loads(stem.with_suffix(".json").read_text())
        title = f"CISPO on {config['rl']['task']} ({config['rl']['preset']}) from {config['from']}"
        print(f"wrote {plot_rl(metrics, rows, stem.with_suffix('.png'), title)}")


if __name__ == "__main__":
    main()
