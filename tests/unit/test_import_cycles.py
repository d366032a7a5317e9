"""No modules import each other in a loop, directly or through others: a loop means neither can be read,
tested or moved alone. Read from the source, function-level and type-only imports included (a loop that
only works because one side imports late is still a loop)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("shared", "queen", "hive", "worker", "keeper_tui")


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    """module -> the modules of ours it imports. `from pkg import name` is an import of pkg.name when that
    is a module, else of pkg itself (its __init__)."""
    paths = {module_name(p, root): p for pkg in packages for p in sorted((root / pkg).rglob("*.py"))}
    graph: dict[str, set[str]] = {name: set() for name in paths}
    for name, path in paths.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against this module's package
                    base = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in paths else module
                           for alias in node.names]
            for target in targets:
                while target and target not in paths:  # import a.b.c -> the deepest module of ours
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
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
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_no_module_imports_itself_through_others():
    graph = import_graph()
    assert len(graph) > 50, "the checker found too few modules to be looking in the right place"
    loops = cycles(graph)
    assert not loops, "modules importing each other in a loop:\n" + "\n".join(" <-> ".join(c) for c in loops)


def test_the_checker_finds_loops_direct_indirect_relative_and_inside_functions(tmp_path):
    pkg = tmp_path / "shared"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from shared import b\n")
    (pkg / "b.py").write_text("def f():\n    import shared.a\n")  # direct, late
    (pkg / "c.py").write_text("from shared.sub.d import x\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "d.py").write_text("from .e import y\n")
    (pkg / "sub" / "e.py").write_text("from ..c import z\n")  # through two others, relatively
    (pkg / "alone.py").write_text("import shared.a\nimport os\n")
    graph = import_graph(tmp_path, ("shared",))
    assert graph["shared.sub.e"] == {"shared.c"} and graph["shared.sub.d"] == {"shared.sub.e"}
    assert sorted(cycles(graph)) == [["shared.a", "shared.b"], ["shared.c", "shared.sub.d", "shared.sub.e"]]
