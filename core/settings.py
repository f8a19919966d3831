"""One settings object for the whole service, read from ``CDP_*`` environment variables.

Use :func:`get_settings` (cached) everywhere; tests override through the environment and
``get_settings.cache_clear()``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Service settings. Every field can be set as ``CDP_<FIELD>`` (e.g. ``CDP_DATA_ROOT``)."""

    model_config = SettingsConfigDict(env_prefix="CDP_", env_file=None, extra="ignore")

    # Where datasets are read from (CIFAR-10 batches, GTSRB folders, npz files).
    data_root: Path = Path("var/data")
    # Named models the service may load (diffusion models and classifiers); never arbitrary paths.
    model_dir: Path = Path("var/models")
    # "auto" picks CUDA when present, else CPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, built once from the environment."""
    return Settings()
