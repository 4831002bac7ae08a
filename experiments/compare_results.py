"""Compare two folders of results (CSV and JSON) number by number: did a change alter any result?

    python experiments/compare_results.py OLD_DIR NEW_DIR [--tolerance 1e-6]

Every CSV present in both folders (same relative path) is compared cell by cell on the columns both hold
(numbers within the relative tolerance, text exactly; path-like columns `command`, `checkpoint` and `run`
are skipped); every JSON leaf present in both is compared the same way. Prints one line per file and every
difference beyond the tolerance in columns or keys that are not timings; exits 1 when a result differs.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from leakage.flags import parse

SKIPPED = ("command", "checkpoint", "run", "from")
TIMINGS = ("seconds", "runtime", "per_second", "phases", "wall", "key")


@dataclass(frozen=True)
class Options:
    """The folders to compare.

    old: the folder of the earlier results.
    new: the folder of the results to check.
    tolerance: relative difference below which two numbers are the same.
    """

    old: str
    new: str
    tolerance: float = 1e-6


def _is_timing(name: str) -> bool:
    return any(word in name for word in TIMINGS)


def _leaves(obj, prefix: str = ""):
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from _leaves(value, f"{prefix}/{key}")
    else:
        yield prefix, obj


def _same(a, b, tolerance: float) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
            return True
        return abs(a - b) <= tolerance * max(1.0, abs(a), abs(b))
    return a == b or (pd.isna(a) and pd.isna(b)) if not isinstance(a, (list, dict)) else a == b


def compare_csv(old: Path, new: Path, tolerance: float) -> list[str]:
    a, b = pd.read_csv(old), pd.read_csv(new)
    if len(a) != len(b):
        return [f"{len(a)} rows vs {len(b)}"]
    columns = [c for c in a.columns if c in b.columns and c not in SKIPPED and not _is_timing(c)]
    return [f"row {i}, {c}: {x!r} vs {y!r}" for c in columns for i, (x, y) in enumerate(zip(a[c], b[c]))
            if not _same(x, y, tolerance)]


def compare_json(old: Path, new: Path, tolerance: float) -> list[str]:
    a, b = dict(_leaves(json.loads(old.read_text()))), dict(_leaves(json.loads(new.read_text())))
    return [f"{key}: {a[key]!r} vs {b[key]!r}" for key in a if key in b and not _is_timing(key)
            and key.rsplit("/", 1)[-1] not in SKIPPED and not _same(a[key], b[key], tolerance)]


def main() -> None:
    options = parse(Options, description=__doc__)
    old, new = Path(options.old), Path(options.new)
    differing = 0
    for path in sorted(p for p in old.rglob("*") if p.suffix in (".csv", ".json")):
        twin = new / path.relative_to(old)
        if not twin.is_file():
            print(f"{path.relative_to(old)}: not in {new}")
            continue
        check = compare_csv if path.suffix == ".csv" else compare_json
        found = check(path, twin, options.tolerance)
        differing += bool(found)
        print(f"{path.relative_to(old)}: " + ("same" if not found else f"{len(found)} differences"))
        for line in found[:10]:
            print("   ", line)
    sys.exit(1 if differing else 0)


if __name__ == "__main__":
    main()
