"""The restart ablation's statistics at the unit of independence, from a `leakage restart` per-unit CSV.

    python experiments/restart_examples.py figures/restart_passcode_fast.csv

A restart CSV holds one row per scored unit (`unit, example, memento_correct, restart_correct`). This rebuilds
the runner's `RestartAblation` from it and prints what the runner now reports: both accuracies and the drop with
intervals over examples (cluster bootstrap), the paired table over examples (which run got more of the
example's units right) and the exact sign test over them. Files written before the runner reported these
(with a McNemar test over units, which treats the units of one example as independent) get the
example-level numbers without re-decoding.
"""

import argparse
import json

import pandas as pd

from leakage.analysis.restart import RestartAblation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv", nargs="+", help="per-unit CSVs written by `leakage restart --out`")
    for path in parser.parse_args().csv:
        frame = pd.read_csv(path)
        missing = {"example", "memento_correct", "restart_correct"} - set(frame.columns)
        if missing:
            raise SystemExit(f"{path}: not a `leakage restart` per-unit CSV (no column {sorted(missing)})")
        ablation = RestartAblation("as scored in the file", frame.memento_correct.to_numpy(bool),
                                   frame.restart_correct.to_numpy(bool), frame.example.to_numpy())
        print(json.dumps({"csv": path, **ablation.as_dict()}, indent=1))


if __name__ == "__main__":
    main()
