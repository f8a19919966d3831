"""The layering rules of README.md's "Architecture", checked on the source: imports point downward only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Algorithm modules know nothing of HTTP, Celery, storage, settings or jobs.
SEAMS = ("core.settings", "core.storage", "core.jobs", "core.specs")
# The entries of core/ (modules or packages, by name) that are not science: the seams and the service code
# that composes them. Every other module under core/ (a new one included) is an algorithm module, checked.
NOT_ALGORITHMS = frozenset({"settings", "storage", "jobs", "specs", "cli", "logs", "__init__"})


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


def _entry(path: Path) -> str:
    """The name of the entry of core/ that holds ``path``: ``generation`` for core/generation.py, ``data``
    for core/data/images.py."""
    return path.relative_to(ROOT / "core").parts[0].removesuffix(".py")


def _algorithm_files() -> list[Path]:
    return [p for p in python_files("core") if _entry(p) not in NOT_ALGORITHMS]


def seam_imports(path: Path) -> set[str]:
    return {m for m in imported_modules(path) for seam in SEAMS if _starts(m, seam)}


@pytest.mark.parametrize("path", _algorithm_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_algorithm_modules_do_not_import_seams(path: Path) -> None:
    bad = seam_imports(path)
    assert not bad, f"{path} imports {sorted(bad)}"


@pytest.mark.parametrize(
    "module",
    ["generation.py", "simulation/toy2d.py", "simulation/gaussian.py", "data/images.py", "data/loaders.py",
     "diffusion/__init__.py", "contrastive/__init__.py", "models/__init__.py", "training/__init__.py",
     "experiment_report/__init__.py", "progress.py"],
)  # fmt: skip
def test_the_science_modules_are_checked(module: str) -> None:
    assert ROOT / "core" / module in _algorithm_files()


def test_the_options_module_is_checked_when_present() -> None:
    options = ROOT / "core" / "options.py"
    assert not options.exists() or options in _algorithm_files()


def test_every_exempt_name_is_an_entry_of_core() -> None:
    entries = {_entry(p) for p in python_files("core")}
    assert NOT_ALGORITHMS <= entries, f"exempt but not in core/: {sorted(NOT_ALGORITHMS - entries)}"


def test_a_seam_import_is_found(tmp_path: Path) -> None:
    module = tmp_path / "science.py"
    module.write_text("import numpy\nfrom core.storage.base import ObjectStore\nimport core.settings as s\n")
    assert seam_imports(module) == {"core.storage.base", "core.settings"}


@pytest.mark.parametrize("path", python_files("api"), ids=lambda p: str(p.relative_to(ROOT)))
def test_api_imports_neither_torch_nor_worker(path: Path) -> None:
    bad = {m for m in imported_modules(path) if _starts(m, "torch") or _starts(m, "worker")}
    assert not bad, f"{path} imports {sorted(bad)}"
