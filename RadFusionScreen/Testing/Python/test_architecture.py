"""The engine's shape: stages import downwards only, no import cycle, no oversized file, no
module named like the standard library.

Every import is read from the source (module level and inside functions alike), so a lazy
import that would dodge a cycle or reach a higher stage is caught too.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

PACKAGE = "RadFusionScreenLib"
ENGINE = REPO_ROOT / "RadFusionScreen" / PACKAGE
#: Lowest first; a module may import its own stage and the stages before it.
STAGES = ("core", "stats", "inputs", "features", "model", "explanation", "serving", "presentation",
          "slicer_glue", "app")
MAX_LINES = 600


def module_name(path: Path) -> str:
    parts = path.relative_to(ENGINE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ENGINE.rglob("*.py"))}


def stage_of(module: str) -> str | None:
    """The stage a module belongs to; None for the package root (the facade) and ``__main__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in STAGES else None


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, engine module) for every import of an engine module in ``path``; a ``from a import b``
    where ``a.b`` is a module counts as an import of ``a.b``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == PACKAGE]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: relative import (the engine imports absolutely)"
            if (node.module or "").split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.append((node.lineno, submodule if submodule in MODULES else node.module))
    return found


def import_graph() -> dict[str, set[str]]:
    return {name: {target for _, target in imported_modules(path) if target != name} for name, path in MODULES.items()}


def test_every_engine_module_is_in_a_stage():
    outside = [name for name in MODULES if stage_of(name) is None and name not in (PACKAGE, f"{PACKAGE}.__main__")]
    assert not outside, f"modules outside the stage folders {STAGES}: {outside}"


def test_no_import_goes_to_a_higher_stage():
    upward = []
    for name, path in MODULES.items():
        stage = stage_of(name)
        if stage is None:
            continue
        for line, target in imported_modules(path):
            target_stage = stage_of(target)
            if target_stage is None:
                upward.append(f"{path.relative_to(REPO_ROOT)}:{line} imports the package root {target}")
            elif STAGES.index(target_stage) > STAGES.index(stage):
                upward.append(f"{path.relative_to(REPO_ROOT)}:{line} ({stage}) imports {target} ({target_stage})")
    assert not upward, "imports from a lower stage to a higher one:\n" + "\n".join(upward)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (as a path that returns to its start), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_not_even_through_a_lazy_import():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checks_catch_an_upward_edge_and_a_cycle():
    """The walkers themselves: a graph with a cycle is found, a stage order is enforced."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert STAGES.index(stage_of(f"{PACKAGE}.core.errors")) < STAGES.index(stage_of(f"{PACKAGE}.app.cli"))
    assert stage_of(PACKAGE) is None


@pytest.mark.parametrize("name", sorted(MODULES))
def test_engine_file_is_at_most_600_lines(name):
    lines = len(MODULES[name].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name].relative_to(REPO_ROOT)} has {lines} lines (at most {MAX_LINES})"


def test_no_module_is_named_like_the_standard_library():
    shadowing = [name for name in MODULES if name.split(".")[-1] in sys.stdlib_module_names]
    assert not shadowing, f"modules named like standard-library modules: {shadowing}"


def test_the_package_version_is_pyprojects():
    import tomllib

    from RadFusionScreenLib.core.version import __version__

    assert tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"] == __version__
