"""What one analysis run produced, and the one writer that puts it on disk.

Every runner (`leakage.analysis.<name>.run(spec, out)`) returns a `Record`: its result `rows` (a table:
the CSV), its headline `results` (JSON), the exact `spec` it ran, the SHA-256 of every checkpoint's
weights it read, the package version, and its timings (total seconds and when each phase began).
`write_record(record, out)` writes, for the path stem `out` (a `.csv` or `.json` suffix is dropped):

    out.csv    the rows, with the command that made them in the last column (when one was given)
    out.json   {"analysis", "command", <the spec's fields>, <results>, "weights_sha256", "leakage_version",
               "seconds", "phases"}: the spec's fields and the results sit at the top level, so a result is
               read as `record["drop"]` and its settings as `record["task"]["n_blocks"]`
    out*       the runner's figures and any other file it keeps beside them (`extra(record, stem) -> [paths]`)

every file atomically (`leakage.io`). A result key that repeats a spec field is an error: one name, one
meaning. `Clock` times a run's phases and forwards each phase's message to the caller's `log`; a
runner ends with `finish(...)`, which builds its `Record` and writes it when asked.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable

import pandas as pd

from leakage.io import atomic_write_json, atomic_write_text

Log = Callable[[str], None]
Extra = Callable[["Record", Path], list[Path]]
RESERVED = ("analysis", "command", "weights_sha256", "leakage_version", "seconds", "phases")
"""Top-level JSON keys of every record; a spec field or result may not use them."""


def package_version() -> str:
    """The installed `leakage` version (the source tree's, for an editable install)."""
    try:
        return metadata.version("leakage")
    except metadata.PackageNotFoundError:
        return "unknown"


class Clock:
    """Wall time of a run and of its phases: `clock("capturing ...")` marks a phase and logs its message."""

    def __init__(self, log: Log | None = None):
        self.start = time.perf_counter()
        self.phases: list[dict] = []
        self.log = log

    def __call__(self, message: str) -> None:
        self.phases.append({"seconds": round(self.seconds, 1), "phase": message})
        if self.log is not None:
            self.log(f"[{self.phases[-1]['seconds']:6.0f} s] {message}")

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start


@dataclass
class Record:
    """One analysis run (module docstring).

    analysis: the runner's name. spec: the frozen spec it ran. results: headline results, JSON-able.
    rows: the result table (None: the analysis has none). weights: checkpoint -> SHA-256 of its weights.
    seconds / phases: wall time, and [{"seconds", "phase"}] marks. command: the command line that ran it.
    files: what `write_record` wrote for it (not part of the JSON).
    """

    analysis: str
    spec: Any
    results: dict
    rows: pd.DataFrame | None
    weights: dict[str, str]
    seconds: float
    phases: list[dict] = field(default_factory=list)
    command: str | None = None
    version: str = field(default_factory=package_version)
    files: list[Path] = field(default_factory=list)

    def to_json(self) -> dict:
        """The JSON form (module docstring)."""
        spec = json.loads(json.dumps(dataclasses.asdict(self.spec)))
        clash = sorted((set(spec) & set(self.results)) | ((set(spec) | set(self.results)) & set(RESERVED)))
        if clash:
            raise ValueError(f"{self.analysis} record: {clash} named both as settings and as results")
        return {"analysis": self.analysis, "command": self.command, **spec, **self.results,
                "weights_sha256": self.weights, "leakage_version": self.version, "seconds": self.seconds,
                "phases": self.phases}


def stem_of(out: str | Path) -> Path:
    """The path stem of an output: `figures/probe.csv` and `figures/probe` both name `figures/probe`."""
    out = Path(out)
    return out.with_suffix("") if out.suffix in (".csv", ".json") else out


def beside(stem: Path, suffix: str) -> Path:
    """`stem` + `suffix` (`figures/probe` + `_layers.png`): the stem's own dots are kept."""
    return stem.parent / (stem.name + suffix)


def write_record(record: Record, out: str | Path, extra: Extra | None = None) -> list[Path]:
    """Write `record` as CSV + JSON (+ the files `extra` writes: figures) at the path stem `out`; returns the
    paths."""
    stem = stem_of(out)
    written = []
    if record.rows is not None:
        rows = record.rows if record.command is None else record.rows.assign(command=record.command)
        written.append(atomic_write_text(beside(stem, ".csv"), rows.to_csv(index=False)))
    written.append(atomic_write_json(beside(stem, ".json"), record.to_json()))
    if extra is not None:
        written += extra(record, stem)
    record.files = written
    return written


def finish(analysis: str, spec, results: dict, rows: pd.DataFrame | None, clock: Clock, command: str | None,
           out: str | Path | None, extra: Extra | None = None, checkpoints: Iterable[str | Path] | None = None) -> Record:
    """A runner's last step: its `Record` (the weights of `checkpoints`, default the spec's `checkpoint`),
    written at the stem `out` when one is given (`write_record`, with the runner's `extra` files)."""
    from leakage.engine.model import checkpoint_sha256

    read = [spec.checkpoint] if checkpoints is None else list(checkpoints)
    record = Record(analysis, spec, results, rows, {str(c): checkpoint_sha256(c) for c in read}, clock.seconds,
                    clock.phases, command)
    if out is not None:
        write_record(record, out, extra)
    return record
