"""What a result depends on besides its inputs: the code that computed it.

`code_fingerprint("leakage.analysis.probing")` is the package version, the versions of the libraries whose
numerics the result goes through (torch, transformers), and the SHA-256 of the source of that module and of
every `leakage` module it imports, directly or not (imports inside functions included). A training run,
a reproduce stage and every record carry the fingerprint of the code they ran, so a result computed by
other code is never served as this code's: a changed fingerprint reruns a stage, and refuses a `--resume`
naming what changed. Only the modules a result can depend on count: editing a figure's style does not make
a trained model stale, editing the decoder does.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import shlex
import sys
from importlib import metadata
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
LIBRARIES = ("torch", "transformers")


def script_command(script: str) -> str:
    """The shell command that ran `script` (a path from the repository root) with this process's arguments,
    quoted so that it reruns verbatim (a `{seed}` pattern or a value with spaces stays one argument)."""
    return shlex.join(["python", script, *sys.argv[1:]])


def package_version() -> str:
    """The installed `leakage` version (the source tree's, for an editable install)."""
    try:
        return metadata.version("leakage")
    except metadata.PackageNotFoundError:
        return "unknown"


def _path(module: str) -> Path | None:
    """The source file of a `leakage` module (a package's `__init__.py`), or None if it is not ours."""
    parts = module.split(".")[1:]
    if not parts:
        return PACKAGE / "__init__.py"
    file = PACKAGE.joinpath(*parts).with_suffix(".py")
    package = PACKAGE.joinpath(*parts) / "__init__.py"
    return file if file.is_file() else package if package.is_file() else None


def _read(path: Path) -> bytes:
    return path.read_bytes()


def _imports(module: str, source: bytes) -> set[str]:
    """`leakage` modules imported anywhere in `source` (`from leakage.analysis import probing` reaches the
    module `leakage.analysis.probing`)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("leakage"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if _path(f"{node.module}.{a.name}")}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("leakage")}
    return {m for m in found if m != module and _path(m) is not None}


@functools.cache
def sources(module: str) -> tuple[str, ...]:
    """`module` and every `leakage` module it imports, transitively, sorted."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _path(name)
        if path is None:
            raise ValueError(f"{name} is not a module of the leakage package")
        todo += sorted(_imports(name, _read(path)))
    return tuple(sorted(seen))


def code_fingerprint(module: str) -> dict:
    """{"leakage": version, "sources_sha256": the hash of `sources(module)`, "torch": ..., "transformers": ...}."""
    digest = hashlib.sha256()
    for name in sources(module):
        digest.update(name.encode() + b"\0" + _read(_path(name)) + b"\0")
    versions = {}
    for library in LIBRARIES:
        try:
            versions[library] = metadata.version(library)
        except metadata.PackageNotFoundError:
            versions[library] = None
    return {"leakage": package_version(), "sources_sha256": digest.hexdigest(), **versions}
