"""The layering rules of DESIGN.md, checked on the source: imports point downward only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Algorithm modules know nothing of HTTP, Celery, storage, settings or jobs.
ALGORITHM_PACKAGES = ("simulation", "diffusion", "contrastive", "models", "training", "data")
SEAMS = ("core.settings", "core.storage", "core.jobs", "core.specs")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def python_files(*parts: str) -> list[Path]:
    base = ROOT.joinpath(*parts)
    if base.is_file():
        return [base]
    return sorted(base.rglob("*.py")) if base.exists() else []


def _starts(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


@pytest.mark.parametrize("path", python_files("core"), ids=lambda p: str(p.relative_to(ROOT)))
def test_core_imports_nothing_above_it(path: Path) -> None:
    bad = {m for m in imported_modules(path) if _starts(m, "api") or _starts(m, "worker")}
    assert not bad, f"{path} imports {sorted(bad)}"


def _algorithm_files() -> list[Path]:
    files: list[Path] = []
    for name in ALGORITHM_PACKAGES:
        files += python_files("core", name) + python_files("core", f"{name}.py")
    return files


@pytest.mark.parametrize("path", _algorithm_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_algorithm_modules_do_not_import_seams(path: Path) -> None:
    bad = {m for m in imported_modules(path) for seam in SEAMS if _starts(m, seam)}
    assert not bad, f"{path} imports {sorted(bad)}"


@pytest.mark.parametrize("path", python_files("api"), ids=lambda p: str(p.relative_to(ROOT)))
def test_api_imports_neither_torch_nor_worker(path: Path) -> None:
    bad = {m for m in imported_modules(path) if _starts(m, "torch") or _starts(m, "worker")}
    assert not bad, f"{path} imports {sorted(bad)}"
