"""Classifier checkpoints: a directory with ``model.safetensors`` (weights and buffers) and ``config.json``
(what ``build_classifier`` needs, plus free-form metadata). No pickle anywhere, so loading a checkpoint runs
no code. :func:`load_weights_only` reads torch files (training checkpoints, weights to convert) with torch's
weights-only loader, which runs no code either."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from core.models.classifiers import ARCHS, ImageClassifier, build_classifier

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT = "cdp-classifier"
FORMAT_VERSION = 1


def save_classifier(
    model: ImageClassifier, path: Path | str, *, config: dict[str, Any] | None = None
) -> None:
    """Write ``path/model.safetensors`` and ``path/config.json``.

    The architecture comes from ``model.build_config`` (set by :func:`build_classifier`); ``config`` is extra
    metadata (dataset, training options, metrics) stored under ``"metadata"`` and must be JSON-serialisable.
    """
    build = getattr(model, "build_config", None)
    if not isinstance(build, dict) or build.get("arch") not in ARCHS:
        raise ValueError("save_classifier needs a model made by build_classifier (no build_config found)")
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    document = {"format": FORMAT, "version": FORMAT_VERSION, "model": build, "metadata": config or {}}
    text = json.dumps(document, indent=2, sort_keys=True)  # fails before anything is written if not JSON-able
    tmp_weights = directory / (WEIGHTS_NAME + ".tmp")
    save_file(state, str(tmp_weights), metadata={"format": FORMAT})
    tmp_weights.replace(directory / WEIGHTS_NAME)
    (directory / CONFIG_NAME).write_text(text + "\n")


def read_classifier_config(path: Path | str) -> dict[str, Any]:
    """The parsed ``config.json`` of a classifier directory (ValueError when missing or malformed)."""
    file = Path(path) / CONFIG_NAME
    if not file.is_file():
        raise ValueError(f"classifier checkpoint {path}: {CONFIG_NAME} missing")
    try:
        document = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"classifier checkpoint {file}: not valid JSON ({exc})") from exc
    if (
        not isinstance(document, dict)
        or document.get("format") != FORMAT
        or not isinstance(document.get("model"), dict)
    ):
        raise ValueError(f"classifier checkpoint {file}: not a {FORMAT} config")
    return document


def load_weights_only(path: Path, *, map_location: str | torch.device = "cpu", what: str = "file") -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain containers only, no code runs. A file that
    loader cannot read raises ValueError naming ``what`` and the file."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as exc:
        raise ValueError(f"{what} {path}: unreadable by torch.load(weights_only=True) ({exc})") from exc


def load_classifier(path: Path | str, *, device: str | torch.device = "cpu") -> ImageClassifier:
    """Rebuild the classifier saved at ``path`` and load its weights; returned in eval mode on ``device``."""
    directory = Path(path)
    if not directory.is_dir():
        raise ValueError(f"classifier checkpoint {path}: not a directory")
    document = read_classifier_config(directory)
    build = dict(document["model"])
    arch = build.pop("arch", None)
    try:
        model = build_classifier(arch, **build)
    except TypeError as exc:
        raise ValueError(
            f"classifier checkpoint {directory / CONFIG_NAME}: bad model config ({exc})"
        ) from exc
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise ValueError(f"classifier checkpoint {path}: {WEIGHTS_NAME} missing")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"classifier checkpoint {weights}: unreadable ({exc})") from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"classifier checkpoint {weights}: weights do not match the config ({exc})") from exc
    model.to(device).eval()
    logger.debug("loaded %s classifier from %s", arch, directory)
    return model
