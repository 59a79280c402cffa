"""The floors of the house: each package imports only the floors below it, no module cycles.

Read from the source with `ast` (imports inside functions included), so the check needs no
import of the project and fails on a lazy import that closes a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FLOORS = {  # a package may import its own floor's modules of its own package, and lower floors
    "fedcodec": 0,  # pure codecs (numpy)
    "netsim": 0,  # pure network model
    "protocol": 1,  # how messages look on both sides
    "ledger": 2,  # what messages cost
    "experiment": 3,  # config, data, models, training, recorder
    "mods": 4,  # client side
    "strategies": 4,  # server side
    "flower_app": 5,  # the apps and command-line tools
}


def project_imports(path: Path) -> set[str]:
    """Modules of this project that `path` imports (`package.module`, or a package)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            found |= {name if _is_module(name) else node.module for name in names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {name for name in found if name.split(".")[0] in FLOORS}


def _is_module(name: str) -> bool:
    return (REPO / (name.replace(".", "/") + ".py")).is_file()


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports, for every module of every package."""
    graph = {}
    for package in FLOORS:
        for path in sorted((REPO / package).glob("*.py")):
            module = f"{package}.{path.stem}" if path.stem != "__init__" else package
            graph[module] = project_imports(path)
    return graph


def test_each_package_imports_only_lower_floors():
    wrong = [
        f"{module} imports {target}"
        for module, targets in import_graph().items()
        for target in targets
        if (home := module.split(".")[0]) != (away := target.split(".")[0])
        and FLOORS[away] >= FLOORS[home]
    ]
    assert wrong == []


def test_no_module_imports_itself_through_others():
    graph = import_graph()
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        for target in sorted(graph.get(module, ())):
            if target in path:
                cycles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in done:
                visit(target, [*path, target])
        done.add(module)

    done: set[str] = set()
    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    assert cycles == []
