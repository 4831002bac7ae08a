"""What one analysis run produced, and the one writer that puts it on disk.

Every runner (`leakage.analysis.<name>.run(spec, out)`) returns a `Record`: its result `rows` (a table:
the CSV), its headline `results` (JSON), the exact `spec` it ran, the SHA-256 of every checkpoint's
weights it read, the fingerprint of the code that ran (`leakage.provenance.code_fingerprint`: package
version, library versions, the hash of the runner's sources), and its timings (total seconds and when
each phase began).
`write_record(record, out)` writes, for the path stem `out` (a `.csv` or `.json` suffix is dropped):

    out.csv    the rows, with the command that made them in the last column (when one was given)
    out.json   {"analysis", "command", <the spec's fields>, <results>, "weights_sha256", "code", "seconds",
               "phases"}: the spec's fields and the results sit at the top level, so a result is read as
               `record["drop"]` and its settings as `record["task"]["n_blocks"]`; strict JSON: a NaN or
               infinite result is an error naming it
    out*       the runner's figures and any other file it keeps beside them (`extra(record, stem) -> [paths]`)

every file atomically (`leakage.io`). A result key that repeats a spec field is an error: one name, one
meaning. `check_outputs(out, FILES, inputs)`, the first thing every runner does, refuses before any work
an output that would land on an input, inside a checkpoint folder or on a directory, or that cannot be
written. `Clock` times a run's phases and forwards each phase's message to the caller's `log`
(`seconds_by_kind` adds its phases up by the first word of their messages); a
runner ends with `finish(...)`, which builds its `Record` and writes it when asked (under `torchrun`,
from rank 0 only: `leakage.shards`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import pandas as pd

from leakage import shards
from leakage.io import atomic_write_json, atomic_write_text, not_finite
from leakage.provenance import code_fingerprint

Log = Callable[[str], None]
Extra = Callable[["Record", Path], list[Path]]
RESERVED = ("analysis", "command", "weights_sha256", "code", "seconds", "phases")
"""Top-level JSON keys of every record; a spec field or result may not use them."""


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


def seconds_by_kind(phases: Sequence[dict], wall_seconds: float, kinds: Sequence[str], rest: str) -> dict[str, float]:
    """Seconds per kind of work from a run's phase marks (`Clock.phases`: [{"seconds": start, "phase": message}]):
    "setup" until the first mark; after it each phase lasts until the next mark (the last until `wall_seconds`) and
    counts toward the kind its message's first word names (one of `kinds`), or else toward `rest`."""
    totals = {"setup": phases[0]["seconds"] if phases else wall_seconds, **{kind: 0.0 for kind in (*kinds, rest)}}
    ends = [phase["seconds"] for phase in phases[1:]] + [wall_seconds]
    for phase, end in zip(phases, ends):
        word = (phase["phase"].split() or [""])[0]
        totals[word if word in kinds else rest] += end - phase["seconds"]
    return {kind: round(seconds, 1) for kind, seconds in totals.items()}


@dataclass
class Record:
    """One analysis run (module docstring).

    analysis: the runner's name (its module's). spec: the frozen spec it ran. results: headline results,
    JSON-able. rows: the result table (None: the analysis has none). weights: checkpoint -> SHA-256 of its
    weights. code: the fingerprint of the runner's code. seconds / phases: wall time, and [{"seconds",
    "phase"}] marks. command: the command line that ran it. files: what `write_record` wrote for it (not
    part of the JSON).
    """

    analysis: str
    spec: Any
    results: dict
    rows: pd.DataFrame | None
    weights: dict[str, str]
    seconds: float
    phases: list[dict] = field(default_factory=list)
    command: str | None = None
    code: dict = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)

    def to_json(self) -> dict:
        """The JSON form (module docstring)."""
        spec = json.loads(json.dumps(dataclasses.asdict(self.spec)))
        clash = sorted((set(spec) & set(self.results)) | ((set(spec) | set(self.results)) & set(RESERVED)))
        if clash:
            raise ValueError(f"{self.analysis} record: {clash} named both as settings and as results")
        record = {"analysis": self.analysis, "command": self.command, **spec, **self.results,
                  "weights_sha256": self.weights, "code": self.code, "seconds": self.seconds, "phases": self.phases}
        bad = not_finite(record)
        if bad:
            raise ValueError(f"{self.analysis} record: not a finite number at {', '.join(bad[:5])}; a result that "
                             "comes out NaN or infinite is a failed measurement, not a number to report")
        return record


def stem_of(out: str | Path) -> Path:
    """The path stem of an output: `figures/probe.csv` and `figures/probe` both name `figures/probe`."""
    out = Path(out)
    return out.with_suffix("") if out.suffix in (".csv", ".json") else out


def _is_checkpoint(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def check_outputs(out: str | Path | None, suffixes: Sequence[str], inputs: Iterable[str | Path]) -> None:
    """Refuse, before any work, the path stem `out` when one of its files (`suffixes`) is a directory, is an
    input or lies inside one (`inputs`: files or folders the run reads), lies inside a checkpoint folder,
    or cannot be written (a parent that is not a writable folder)."""
    if out is None:
        return
    stem = stem_of(out)
    read = [Path(i).resolve() for i in inputs if i is not None]
    for path in (beside(stem, suffix) for suffix in suffixes):
        target = path.resolve()
        if target.is_dir():
            raise IsADirectoryError(f"--out {out}: {path} is a directory; give a path stem for the files")
        for source in read:
            if target == source or source in target.parents:
                raise ValueError(f"--out {out}: {path} would overwrite the input {source}" if target == source else
                                 f"--out {out}: {path} lies inside the input {source}; write results elsewhere")
        inside = next((p for p in target.parents if _is_checkpoint(p)), None)
        if inside is not None:
            raise ValueError(f"--out {out}: {path} lies inside the checkpoint folder {inside}")
        folder = next((p for p in target.parents if p.exists()), None)
        if folder is None or not folder.is_dir() or not os.access(folder, os.W_OK):
            raise PermissionError(f"--out {out}: cannot write {path} ({folder} is not a writable folder)")


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


def finish(runner: str, spec, results: dict, rows: pd.DataFrame | None, clock: Clock, command: str | None,
           out: str | Path | None, extra: Extra | None = None, checkpoints: Iterable[str | Path] | None = None) -> Record:
    """A runner's last step: its `Record` (`runner`: the runner module's `__name__`; the weights of
    `checkpoints`, default the spec's `checkpoint`), written at the stem `out` when one is given
    (`write_record`, with the runner's `extra` files)."""
    from leakage.engine.model import checkpoint_sha256

    read = [spec.checkpoint] if checkpoints is None else list(checkpoints)
    record = Record(runner.rsplit(".", 1)[-1], spec, results, rows, {str(c): checkpoint_sha256(c) for c in read},
                    clock.seconds, clock.phases, command, code_fingerprint(runner))
    record.to_json()  # a NaN or infinite result, or a result named like a setting, is an error here
    if out is not None and shards.rank() == 0:  # under torchrun every rank ran the analysis; one writes it
        planned = {beside(stem_of(out), suffix) for suffix in sys.modules[runner].FILES}
        unplanned = sorted(str(p) for p in write_record(record, out, extra) if p not in planned)
        if unplanned:
            raise RuntimeError(f"{runner} wrote {unplanned}, which its FILES do not declare (check_outputs never "
                               "saw them)")
    return record


def finite_or_none(value: float) -> float | None:
    """A headline number, or None where it is undefined (a ratio over a zero difference)."""
    return float(value) if math.isfinite(value) else None
