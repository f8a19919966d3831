"""experiments/ holds every script that regenerates a result in docs/: each is listed in its README, imports
only from core (never core.cli, the command line), and every path the docs name under experiments/ exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
SCRIPTS = sorted(p for p in EXPERIMENTS.iterdir() if p.suffix in (".py", ".sh"))


def test_the_readme_lists_every_script_once() -> None:
    listed = re.findall(r"^\| `([^`]+)` \|", (EXPERIMENTS / "README.md").read_text(), flags=re.M)
    assert sorted(listed) == [p.name for p in SCRIPTS]


@pytest.mark.parametrize("script", [p for p in SCRIPTS if p.suffix == ".py"], ids=lambda p: p.name)
def test_a_python_script_imports_core_but_not_the_command_line(script: Path) -> None:
    modules = set()
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
        elif isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
    assert any(m == "core" or m.startswith("core.") for m in modules)
    assert not [m for m in modules if m == "core.cli" or m.startswith("core.cli.")]


def test_every_experiments_path_in_the_docs_exists() -> None:
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *SCRIPTS]
    named = {(doc.name, m) for doc in docs for m in re.findall(r"experiments/[\w.-]+\w", doc.read_text())}
    assert named, "no doc names a script under experiments/"
    missing = sorted((doc, path) for doc, path in named if not (ROOT / path).exists())
    assert not missing, missing
