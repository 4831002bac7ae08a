"""File writing that never leaves a partial file behind, and writes through to what the user named.

`atomic_file(path)` yields a temp path to write; when the block succeeds the result lands on `path`:
* a regular file (new or existing) is replaced atomically by a rename from a temp file beside it;
  an existing file keeps its permissions, a new one gets what a plain `open()` gives (0o666 less the
  umask);
* a symlink is followed: the file it points to is replaced, the link stays;
* a non-regular file (a device, a FIFO) cannot be renamed over: the bytes are written into it in place;
* a directory, or a file without write permission, is refused before anything is written.
When the block raises, nothing is written and the temp file is removed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator


def _new_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_file(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temp path to write to; on success its bytes land on `path` (module docstring). `suffix` lets
    writers that infer a format from it (matplotlib) see the real one."""
    path = Path(path)
    target = Path(os.path.realpath(path))  # through symlinks, to the file the user means
    mode, regular = _new_file_mode(), True
    if target.exists():
        st = target.stat()
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(f"{path} is a directory; cannot write a file there")
        regular = stat.S_ISREG(st.st_mode)
        if regular and not st.st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
            raise PermissionError(f"{path} is read-only (mode {stat.S_IMODE(st.st_mode):o}); refusing to replace it")
        mode = stat.S_IMODE(st.st_mode)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
    # a device or FIFO: stage in the temp directory, never beside it (e.g. not in /dev)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent if regular else None)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if regular:
            os.chmod(tmp, mode)
            os.replace(tmp, target)
        else:
            with open(tmp, "rb") as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` all or nothing (see `atomic_file`)."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def not_finite(obj, where: str = "") -> list[str]:
    """Paths (`/a/b/0`) of the NaN or infinite numbers inside a JSON-able object."""
    if isinstance(obj, float):
        return [] if math.isfinite(obj) else [where or "/"]
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in not_finite(v, f"{where}/{k}")]
    if isinstance(obj, (list, tuple)):
        return [p for i, v in enumerate(obj) for p in not_finite(v, f"{where}/{i}")]
    return []


def _strict_json(obj, path: str | Path, **kwargs) -> str:
    """Strict JSON (no NaN or Infinity, which are not JSON); a non-finite number is an error naming it."""
    bad = not_finite(obj)
    if bad:
        raise ValueError(f"{path}: not written: NaN or infinite numbers at {', '.join(bad[:5])}")
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, **kwargs)


def atomic_write_json(path: str | Path, obj) -> Path:
    """Write `obj` as strict, indented JSON, all or nothing."""
    return atomic_write_text(path, _strict_json(obj, path, indent=2) + "\n")


def atomic_write_jsonl(path: str | Path, records: Iterable[dict]) -> Path:
    """Write one strict JSON object per line, all or nothing."""
    return atomic_write_text(path, "".join(_strict_json(r, path) + "\n" for r in records))


def read_text_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of a UTF-8 text file; a line that is not UTF-8 raises ValueError naming file and line."""
    path = Path(path)
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"{path}, line {lineno}: not UTF-8 text (byte {raw[err.start]:#04x} at column "
                                 f"{err.start + 1}); is this a binary file?") from None


def read_text(path: str | Path) -> str:
    """A whole UTF-8 text file; invalid UTF-8 raises ValueError naming the file and line."""
    return "".join(line for _, line in read_text_lines(path))
