"""Every package the project imports is declared in pyproject.toml, where pip installs it from.

A missing declaration works on the machine that happens to have the package (rich came with
another install here) and fails on a fresh one, so the imports are read from the code itself.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parent.parent


def top_level_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def declared(requirements: list[str]) -> set[str]:
    """Distribution names as pip normalises them (PEP 503), extras and versions left out."""
    names = (re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0] for r in requirements)
    return {name.lower().replace("_", "-") for name in names}


def distributions_imported(paths: list[Path]) -> dict[str, set[str]]:
    """{distribution: files importing it} for every third-party import in `paths`."""
    ours = {p.stem for p in ROOT.rglob("*.py")} | {p.name for p in ROOT.iterdir() if p.is_dir()}
    providers = importlib.metadata.packages_distributions()
    found: dict[str, set[str]] = {}
    for path in paths:
        for name in top_level_imports(path) - set(sys.stdlib_module_names) - ours:
            for dist in providers.get(name, [name]):
                found.setdefault(dist.lower().replace("_", "-"), set()).add(path.name)
    return found


def project_files(*, tests: bool) -> list[Path]:
    skipped = {".venv", ".ci-venv", "build"}
    files = [p for p in ROOT.rglob("*.py") if not skipped & set(p.relative_to(ROOT).parts)]
    return [p for p in files if (p.relative_to(ROOT).parts[0] == "tests") == tests]


def test_every_imported_package_is_declared() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = declared(project["dependencies"])
    extras = project["optional-dependencies"]
    missing = {
        dist: files
        for dist, files in distributions_imported(project_files(tests=False)).items()
        if dist not in runtime
    }
    assert not missing, f"imported, not in [project] dependencies: {missing}"
    with_tests = runtime | declared(extras["test"])
    missing = {
        dist: files
        for dist, files in distributions_imported(project_files(tests=True)).items()
        if dist not in with_tests
    }
    assert not missing, f"imported by the tests, not in dependencies or the test extra: {missing}"


def test_the_wheel_installs_the_package_alone(tmp_path: Path) -> None:
    """`pip install .` puts one package in site-packages: `fourways`, every module of it (a
    module left out works from the checkout and fails installed), and nothing else at the top
    (the runners' names, `compare` or `datamodule`, would shadow other projects' modules)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    installed = {n for n in names if ".dist-info/" not in n}
    top = {n.split("/")[0] for n in installed}
    assert top == {"fourways"}, f"at the top of site-packages: {sorted(top)}"
    package = {p.relative_to(ROOT).as_posix() for p in (ROOT / "fourways").rglob("*.py")}
    assert package <= installed, f"not installed: {sorted(package - installed)}"
