"""Shared test fixtures. Area-specific fixtures live in the test modules or in tests/<area>/conftest.py."""

from __future__ import annotations

import os

import pytest

from core.settings import get_settings


@pytest.fixture(autouse=True)
def _isolated_settings(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory):
    """Every test starts with no CDP_* variables from the caller's shell and fresh cached settings."""
    for name in list(os.environ):
        if name.startswith("CDP_"):
            monkeypatch.delenv(name)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()
