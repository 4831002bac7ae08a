"""Redraw a probing run's figures from its CSV (no model, no capture): restyle or compare without rerunning.

    python experiments/plot_probe.py figures/probe_digits_fast.csv

Writes `<csv stem>_conditions.png`, `_layers.png` and `_sweeps.png` beside the CSV, as `leakage probe --out` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from leakage.flags import parse
from leakage.plotting import plot_probe_conditions, plot_probe_layers, plot_probe_sweeps, probe_rows


@dataclass(frozen=True)
class Options:
    """What to redraw.

    csv: probe CSVs written by `leakage probe --out`.
    """

    csv: tuple[str, ...]


def main() -> None:
    args = parse(Options, description=__doc__)
    for name in args.csv:
        path = Path(name)
        table = pd.read_csv(path)
        rows = probe_rows(table)
        title = (f"passcode probe ({table.kind.iloc[0]}), {table.checkpoint.iloc[-1]}, "
                 f"{int(table.n_traces.iloc[0]):,} traces")
        for figure, draw in (("conditions", plot_probe_conditions), ("layers", plot_probe_layers),
                             ("sweeps", plot_probe_sweeps)):
            print(draw(rows, path.with_name(f"{path.stem}_{figure}.png"), title=title))


if __name__ == "__main__":
    main()
