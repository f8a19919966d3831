"""Validate a model directory by loading it and running one forward pass on its declared shape; run as a
subprocess of the API (``python -m core.jobs.model_check DIR``), so the API process never imports torch and a
model that crashes its loader cannot take the API down.

Prints one JSON object: ``{"kind", "arch", "image_shape", "num_classes", "parameters"}``, or
``{"error": ...}`` (exit status 1). Diffusion models are read by
:func:`core.diffusion.load_diffusion_model` (safetensors preferred, ``.bin`` through torch's weights-only
loader), classifiers by :func:`core.models.load_classifier` (safetensors + the project's ``config.json``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any


def _is_classifier(directory: Path) -> bool:
    config = directory / "config.json"
    if not config.is_file() or not (directory / "model.safetensors").is_file():
        return False
    try:
        return json.loads(config.read_text()).get("format") is not None and "model" in json.loads(
            config.read_text())
    except (ValueError, OSError):
        return False


def check(directory: Path) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    with torch.no_grad():
        if _is_classifier(directory):
            from core.models import load_classifier

            model = load_classifier(directory)
            build = dict(getattr(model, "build_config", {}))
            channels, size = int(build.get("channels", 3)), int(build.get("image_size", 32))
            logits = model(torch.rand(2, channels, size, size))
            if tuple(logits.shape) != (2, model.num_classes) or not torch.isfinite(logits).all():
                raise ValueError(f"the forward pass gave {tuple(logits.shape)} (or non-finite values), "
                                 f"expected (2, {model.num_classes})")
            features = model.features(torch.rand(1, channels, size, size))
            if features.ndim != 2:
                raise ValueError("features(x) must give one vector per image")
            return {"kind": "classifier", "arch": str(build.get("arch")),
                    "image_shape": [size, size, channels],
                    "num_classes": int(model.num_classes),
                    "parameters": int(sum(p.numel() for p in model.parameters()))}
        from core.diffusion import load_diffusion_model

        diffusion = load_diffusion_model(directory)
        unet = diffusion.unet
        x = torch.randn(1, diffusion.channels, diffusion.image_size, diffusion.image_size)
        labels = torch.zeros(1, dtype=torch.long) if diffusion.num_classes else None
        out = unet(x, torch.tensor([diffusion.num_train_timesteps - 1]), class_labels=labels).sample
        if out.shape != x.shape or not torch.isfinite(out).all():
            raise ValueError(f"the forward pass gave {tuple(out.shape)} (or non-finite values), expected "
                             f"{tuple(x.shape)}")
        return {"kind": "diffusion", "arch": type(unet).__name__,
                "image_shape": [diffusion.image_size, diffusion.image_size, diffusion.channels],
                "num_classes": diffusion.num_classes,
                "parameters": int(sum(p.numel() for p in unet.parameters()))}


def main(argv: list[str]) -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    directory = Path(argv[0])
    try:
        result = check(directory)
    except Exception as exc:  # noqa: BLE001 - any failure is the model's: report it, shortly
        text = str(exc).replace(str(directory), "<model>")
        print(json.dumps({"error": f"{type(exc).__name__}: {text}"[:400]}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":  # pragma: no cover - run as a subprocess
    sys.exit(main(sys.argv[1:]))
