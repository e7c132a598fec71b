"""The layout's rules, checked on the source: no import circles, nothing below the techniques and
the CLI imports them, and no technique is chosen by name outside its own folder."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import sparsify_cnn
from sparsify_cnn import technique

ROOT = Path(sparsify_cnn.__file__).parent
UPPER = ("sparsify_cnn.techniques", "sparsify_cnn.cli", "sparsify_cnn.__main__")


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = ["sparsify_cnn", *path.relative_to(ROOT).with_suffix("").parts]
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports() -> dict[str, set[str]]:
    """Module -> the package modules it imports (at any depth of its code)."""
    modules, graph = _modules(), {}
    for name, path in modules.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                source = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module or ""
                for alias in node.names:
                    if f"{source}.{alias.name}" in modules:
                        found.add(f"{source}.{alias.name}")
                    elif source in modules:
                        found.add(source)
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names if alias.name in modules}
        graph[name] = found - {name}
    return graph


def test_no_import_circles():
    graph = _imports()

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()] - seen:
                if nxt == goal:
                    return True
                seen.add(nxt)
                todo.append(nxt)
        return False

    circles = sorted(f"{a} <-> {b}" for a, deps in graph.items() for b in deps if a < b and reaches(b, a))
    assert not circles, circles


def test_nothing_below_the_techniques_and_the_cli_imports_them():
    upward = sorted(f"{a} imports {b}" for a, deps in _imports().items() if not a.startswith(UPPER)
                    for b in deps if b.startswith(UPPER))  # fmt: skip
    assert not upward, upward


def test_no_technique_is_chosen_by_name_outside_its_folder():
    names = "|".join(technique.names())
    pattern = re.compile(rf"""(==|!=|\bin)\s*\(?\s*["']({names})["']""")
    found = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}" for path in ROOT.rglob("*.py")
             if "techniques" not in path.parts
             for number, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]  # fmt: skip
    assert not found, found
