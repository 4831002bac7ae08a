"""The house's rules, checked on the source: wings import only the wings before them, no module-level import
cycle, no printing in the library, no private names across modules, and the README and the architecture
page name exactly the modules the tree holds."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "leakage"
FOUNDATION = {"config", "errors", "io", "flags", "stats", "seeding", "provenance", "plotting", "shards"}
ORDER = ["foundation", "memento", "pipeline", "engine", "training", "analysis", "top"]
ALLOWED = {  # a wing may import these wings (and itself)
    "foundation": {"foundation"},
    "memento": {"foundation", "memento"},
    "pipeline": {"foundation", "memento", "pipeline"},
    "engine": {"foundation", "memento", "engine"},
    "training": {"foundation", "memento", "engine", "training"},
    "analysis": {"foundation", "memento", "engine", "training", "analysis"},
    "top": set(ORDER),
}


def modules() -> dict[str, Path]:
    """Dotted module name -> file, every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def wing(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "top"
    if parts[1] in ("memento", "pipeline", "engine", "training", "analysis"):
        return parts[1]
    return "foundation" if parts[1] in FOUNDATION else "top"


def imports(path: Path, module_level_only: bool = False) -> list[tuple[str, list[str], int]]:
    """(imported leakage module, names, line) of every import in a file (function bodies too, unless asked)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    found = []
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("leakage"):
            found.append((node.module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("leakage")]
    return found


def resolve(target: str, names: list[str], known: dict[str, Path]) -> list[str]:
    """The modules an import statement reaches (`from leakage.analysis import probing` reaches the submodule)."""
    reached = [f"{target}.{n}" for n in names if f"{target}.{n}" in known]
    return reached or [target]


def test_wings_import_only_the_wings_before_them():
    known = modules()
    wrong = []
    for module, path in known.items():
        for target, names, line in imports(path):
            for reached in resolve(target, names, known):
                if wing(reached) not in ALLOWED[wing(module)]:
                    wrong.append(f"{path.relative_to(ROOT)}:{line} ({wing(module)}) imports {reached} ({wing(reached)})")
    assert not wrong, "\n".join(wrong)


def test_no_module_level_import_cycle():
    known = modules()
    graph = {m: {r for t, n, _ in imports(p, module_level_only=True) for r in resolve(t, n, known) if r != m}
             for m, p in known.items()}
    done, stack = set(), []

    def visit(module):
        if module in stack:
            raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(module):] + [module]))
        if module in done or module not in graph:
            return
        stack.append(module)
        for target in sorted(graph[module]):
            visit(target)
        stack.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


def test_the_library_never_prints_and_imports_no_private_names():
    for module, path in modules().items():
        tree = ast.parse(path.read_text())
        if not module.endswith("cli"):
            prints = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call)
                      and isinstance(n.func, ast.Name) and n.func.id == "print"]
            assert not prints, f"{path.relative_to(ROOT)} prints at lines {prints}"
        for target, names, line in imports(path):
            private = [n for n in names if n.startswith("_")]
            assert not private, f"{path.relative_to(ROOT)}:{line} imports private names {private} from {target}"


@pytest.mark.parametrize("document", ["README.md", "docs/architecture.md"])
def test_documents_name_exactly_the_modules_of_the_tree(document):
    text = (ROOT / document).read_text()
    named = set(re.findall(r"leakage/[\w/]+\.py", text))
    tree = {str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}
    tree |= {str(p.relative_to(ROOT)) for p in PACKAGE.glob("*/__init__.py")} & named
    assert not named - tree, f"{document} names modules that do not exist: {sorted(named - tree)}"
    missing = {m for m in tree - named if "/pipeline/" not in m or document == "docs/architecture.md"}
    assert not missing, f"{document} does not name: {sorted(missing)}"


def test_every_dotted_name_in_the_documents_exists():
    """`leakage.x.y` in the README, the docs, docstrings and comments of the package, the notebooks and the
    scripts resolves to a module or one of its attributes."""
    import importlib

    wrong = []
    texts = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted(PACKAGE.rglob("*.py")),
             *sorted((ROOT / "notebooks").glob("*.py")), *sorted((ROOT / "experiments").glob("*.py"))]
    for document in texts:
        for name in sorted(set(re.findall(r"\bleakage(?:\.\w+)+", document.read_text()))):
            parts = name.split(".")
            if parts[-1] in ("json", "py", "md", "csv", "txt"):  # a file name (`leakage.json`), not a module
                continue
            for cut in range(len(parts), 0, -1):
                try:
                    value = importlib.import_module(".".join(parts[:cut]))
                except ImportError:
                    continue
                try:
                    for attribute in parts[cut:]:
                        value = getattr(value, attribute)
                except AttributeError:
                    wrong.append(f"{document.name}: {name}")
                break
    assert not wrong, "\n".join(wrong)
