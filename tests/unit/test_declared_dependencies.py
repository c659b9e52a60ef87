"""Every third-party module that the scripts under ops/ and the tests import is declared in
pyproject.toml: the service's dependencies, plus the `ops` extra for ops/ and the `test` extra
for tests/. A module that is merely installed in this environment (by another package's
dependencies, or by hand) would otherwise let `make bench` or `make chaos` fail on a fresh
checkout."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from collections.abc import Iterator
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCAL = {"service", "ops", "tests"}
# aiohttp's own types, imported by tests to build requests; installed with aiohttp and part of
# its public interface.
THROUGH_AIOHTTP = {"multidict", "yarl"}


def normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(requirements: list[str]) -> set[str]:
    names = set()
    for requirement in requirements:
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
        assert match, requirement
        names.add(normalised(match.group(1)))
    return names


def declared(*extras: str) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = requirement_names(project["dependencies"])
    for extra in extras:
        names |= requirement_names(project["optional-dependencies"][extra])
    return names


def imported(path: Path) -> Iterator[tuple[str, int]]:
    """The top-level modules a file imports (absolute imports only), with their line."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.partition(".")[0], node.lineno
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.partition(".")[0], node.lineno


def third_party(folder: str) -> dict[str, list[str]]:
    """Third-party module -> where it is imported, for every .py file under `folder`. A script
    run by path imports its siblings by their bare names (ops/bench): those are local too."""
    found: dict[str, list[str]] = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        siblings = {p.stem for p in path.parent.glob("*.py")} | {
            p.name for p in path.parent.iterdir() if p.is_dir()
        }
        for module, line in imported(path):
            if module in sys.stdlib_module_names or module in LOCAL or module in siblings:
                continue
            found.setdefault(module, []).append(f"{path.relative_to(ROOT)}:{line}")
    return found


def undeclared(folder: str, names: set[str]) -> list[str]:
    distributions = packages_distributions()
    missing = []
    for module, where in sorted(third_party(folder).items()):
        if module in THROUGH_AIOHTTP and "aiohttp" in names:
            continue
        provided_by = {normalised(d) for d in distributions.get(module, [])}
        if not provided_by:
            missing.append(f"{module} (not installed; imported at {', '.join(where)})")
        elif not provided_by & names:
            missing.append(
                f"{module} from {'/'.join(sorted(provided_by))} (imported at {', '.join(where)})"
            )
    return missing


def test_the_parser_sees_the_ops_scripts_imports() -> None:
    modules = third_party("ops")
    assert {"aiohttp", "asyncpg", "psutil"} <= set(modules)
    assert not {"procs", "pgtools", "service", "ops"} & set(modules)  # siblings and local


@pytest.mark.parametrize(("folder", "extra"), [("ops", "ops"), ("tests", "test")])
def test_every_third_party_import_is_declared(folder: str, extra: str) -> None:
    missing = undeclared(folder, declared(extra))
    assert not missing, (
        f"imported under {folder}/ but declared neither in dependencies nor in the {extra!r}"
        f" extra of pyproject.toml: {'; '.join(missing)}"
    )


def test_make_installs_the_ops_extra() -> None:
    makefile = (ROOT / "Makefile").read_text()
    installs = re.findall(r"pip install [^\n]*-e '\.\[([a-z,]+)\]'", makefile)
    assert installs, "Makefile: no pip install -e '.[...]'"
    assert all({"test", "ops"} <= set(extras.split(",")) for extras in installs), installs
