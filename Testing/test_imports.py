"""The engine's import graph, read from the source with ``ast`` (nothing is imported): no module imports
itself round a circle, and nothing outside ``VoteMILib/cli/`` imports the command line.

Every import counts, at module level and inside functions (a lazy import is still an arrow: it only
moves the circle to run time), relative and absolute. ``from .pkg import name`` is an arrow to the
submodule ``pkg.name`` when there is one, else to ``pkg`` (its ``__init__``). Importing a submodule
also runs its package's ``__init__``, but that is no arrow of the importing module: a package whose
``__init__`` gathers its submodules' names is no circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parent.parent / "VoteMI" / "VoteMILib"
PACKAGE = "VoteMILib"
CLI = f"{PACKAGE}.cli"


def module_name(path: Path, root: Path = ENGINE, package: str = PACKAGE) -> str:
    """``VoteMILib.vlm.pipeline`` for ``vlm/pipeline.py``; ``VoteMILib.vlm`` for ``vlm/__init__.py``."""
    parts = [package, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def read_modules(root: Path = ENGINE, package: str = PACKAGE) -> dict:
    """{module name: (parsed tree, is a package)} of every ``.py`` file under ``root``."""
    return {module_name(path, root, package): (ast.parse(path.read_text(encoding="utf-8"), str(path)),
                                               path.name == "__init__.py")
            for path in sorted(root.rglob("*.py"))}


def _known(name: str, modules) -> str | None:
    """The longest prefix of a dotted name that is one of ``modules`` (None outside the package)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def imports_of(name: str, tree: ast.AST, is_package: bool, modules) -> set:
    """The modules of ``modules`` that ``name`` imports anywhere in its source."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(_known(alias.name, modules) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # A package's own __init__ is its base; a module's base is the package holding it.
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                found.add(submodule if submodule in modules else _known(target, modules))
    found.discard(None)
    return found


def import_graph(modules: dict) -> dict:
    return {name: imports_of(name, tree, is_package, modules) for name, (tree, is_package) in modules.items()}


def cycles(graph: dict) -> list:
    """The import circles: strongly connected components of more than one module, or a module importing
    itself (Tarjan's algorithm, iterative so that a deep graph cannot exhaust the stack)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph.get(node, ()):
                    found.append(sorted(component))
    return found


def is_cli(name: str) -> bool:
    return name == CLI or name.startswith(CLI + ".")


def upward_imports(graph: dict) -> list:
    """(importer, imported) pairs where a module outside the CLI package imports part of it."""
    return sorted((name, target) for name, targets in graph.items() if not is_cli(name)
                  for target in targets if is_cli(target))


@pytest.fixture(scope="module")
def graph():
    return import_graph(read_modules())


def test_the_graph_is_read_from_every_module(graph):
    # The reader itself: a file it failed to resolve would make both checks below pass vacuously.
    assert f"{PACKAGE}.selection" in graph and f"{PACKAGE}.vlm.pipeline" in graph
    assert f"{PACKAGE}.clustering" in graph[f"{PACKAGE}.selection"]
    assert CLI in graph and graph[CLI], "the command line imports its commands"
    assert sum(len(targets) for targets in graph.values()) > 100


def test_no_import_cycle(graph):
    found = cycles(graph)
    assert not found, "import circles: " + "; ".join(" -> ".join(c) for c in found)


def test_nothing_outside_the_cli_package_imports_it(graph):
    found = upward_imports(graph)
    assert not found, "imports of the command line from the engine: " + ", ".join(f"{a} -> {b}" for a, b in found)


def _graph_of(tmp_path, files: dict) -> dict:
    for relative, text in files.items():
        path = tmp_path / PACKAGE / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return import_graph(read_modules(tmp_path / PACKAGE))


def test_the_reader_sees_lazy_relative_and_absolute_imports(tmp_path):
    graph = _graph_of(tmp_path, {
        "__init__.py": "__version__ = '1'\n",
        "engine.py": "def run():\n    from .cli import main\n    from . import __version__\n",
        "cli/__init__.py": "from .select import add\nfrom ..engine import run\n",
        "cli/select.py": "import VoteMILib.engine\nfrom VoteMILib import helpers\n",
        "helpers.py": "import os\nfrom .vlm import pipeline\n",
        "vlm/__init__.py": "from .pipeline import describe\n",
        "vlm/pipeline.py": "from ..helpers import x\n"})
    assert graph["VoteMILib.engine"] == {"VoteMILib.cli", "VoteMILib"}
    assert graph["VoteMILib.cli"] == {"VoteMILib.cli.select", "VoteMILib.engine"}
    assert graph["VoteMILib.cli.select"] == {"VoteMILib.engine", "VoteMILib.helpers"}
    assert graph["VoteMILib.vlm"] == {"VoteMILib.vlm.pipeline"}
    assert sorted(map(tuple, cycles(graph))) == [("VoteMILib.cli", "VoteMILib.cli.select", "VoteMILib.engine"),
                                                 ("VoteMILib.helpers", "VoteMILib.vlm.pipeline")]
    assert upward_imports(graph) == [("VoteMILib.engine", "VoteMILib.cli")]
