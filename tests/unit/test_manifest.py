"""Every committed result regenerates: each file under figures/ is claimed by an entry of figures/manifest.json
whose command is written in docs/results.md, and every entry names files that exist."""

import fnmatch
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIGURES = ROOT / "figures"


def entries() -> list[dict]:
    return json.loads((FIGURES / "manifest.json").read_text())["entries"]


def claimed_by(name: str) -> list[str]:
    return [e["command"] for e in entries() if any(fnmatch.fnmatch(name, pattern) for pattern in e["files"])]


def test_every_file_under_figures_has_one_command():
    files = sorted(str(p.relative_to(FIGURES)) for p in FIGURES.rglob("*") if p.is_file())
    unclaimed = [f for f in files if not claimed_by(f)]
    ambiguous = [f for f in files if len(claimed_by(f)) > 1]
    assert not unclaimed, f"no command in figures/manifest.json writes {unclaimed}"
    assert not ambiguous, f"several commands claim {ambiguous}"


def test_every_command_is_written_in_the_docs_and_every_entry_names_files():
    docs = (ROOT / "docs" / "results.md").read_text()
    for entry in entries():
        if entry["command"].startswith("("):
            continue
        assert entry["command"] in docs, f"docs/results.md does not give the command {entry['command']!r}"
        found = [p for pattern in entry["files"] for p in FIGURES.glob(pattern)]
        assert found, f"no file under figures/ matches {entry['files']}"
