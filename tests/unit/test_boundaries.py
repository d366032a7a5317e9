"""The architecture as the imports show it: shared/ is the protocol everyone may use; each program
(queen, hive, worker, keeper) imports only shared/ and itself, so no daemon reaches into another.
Read from the source, function-level imports included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROGRAMS = ("queen", "hive", "worker", "keeper_tui")
PACKAGES = ("shared", *PROGRAMS)


def imported_packages(path: Path) -> set[tuple[str, int]]:
    """(top-level package, line) for every import in the file that names one of ours."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.ImportFrom):  # relative: stays inside its own package
            continue
        else:
            continue
        found |= {(name.split(".")[0], node.lineno) for name in names if name.split(".")[0] in PACKAGES}
    return found


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_imports_only_shared_and_itself(package):
    allowed = {"shared"} | {package}
    wrong = [f"{path.relative_to(ROOT)}:{line} imports {target}"
             for path in sources(package) for target, line in sorted(imported_packages(path))
             if target not in allowed]
    assert sources(package), f"no sources found for {package}"
    assert not wrong, "imports across program boundaries:\n" + "\n".join(wrong)


def test_the_checker_sees_function_level_imports(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from hive.models import x\n    import worker.engine\n")
    assert imported_packages(sample) == {("hive", 2), ("worker", 3)}
