"""Shared test fixtures. Area-specific fixtures live in the test modules or in tests/<area>/conftest.py.

Modules that run torch on tiny tensors opt in to one intra-op thread with
``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

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


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """torch at one intra-op thread for the whole module (its module-scoped fixtures included), then the
    caller's count again. The tensors are tiny and the machine's cores are shared: more threads
    oversubscribe them and run several times slower. Processes that launch() starts inherit the count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
