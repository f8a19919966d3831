"""Import a plain WideResNet state dict in the layout of the TRADES code and RobustBench's ``WideResNet``
(``robustbench/model_zoo/architectures/wide_resnet.py``) as a classifier directory of this project.

That layout (pre-activation blocks, ReLU, no normalisation inside, input in [0, 1]):

    conv1.weight
    block{1,2,3}.layer.{k}.bn1.* / conv1.weight / bn2.* / conv2.weight / convShortcut.weight (when in != out)
    bn1.*                       (the last BatchNorm)
    fc.weight, fc.bias
    sub_block1.*                (TRADES' unused extra block: dropped)

maps one to one onto :class:`core.models.classifiers.WideResNet` with ``activation="relu"`` (the same
blocks, shortcuts from the pre-activation, 3 x 3 convs with padding 1, global average pooling). Depth, widen
factor and class count are read from the tensors' shapes. Checkpoints wrapped as ``{"state_dict": ...}`` or
``{"model_state_dict": ...}`` or saved from ``nn.DataParallel`` (``module.`` prefixes) are accepted.

Not this layout: DeepMind's ``DMWideResNet`` (Gowal et al.; ``init_conv``, ``layer.*.block.*.conv_0``,
``logits``) pads stride-2 convolutions asymmetrically ("SAME"), which this WRN does not reproduce; such a
state dict is refused rather than converted into a model that computes something else.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from core.models.classifiers import Activation, ImageClassifier, build_classifier
from core.models.io import load_weights_only, save_classifier

_BLOCK_KEY = re.compile(r"^block([123])\.layer\.(\d+)\.(bn1|conv1|bn2|conv2|convShortcut)\.(.+)$")


def _unwrap(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    for wrapper in ("state_dict", "model_state_dict", "model"):
        inner = state.get(wrapper)
        if isinstance(inner, Mapping) and inner and all(isinstance(k, str) for k in inner):
            state = inner
            break
    tensors = {(k.removeprefix("module.")): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError("no tensors found in the state dict")
    return tensors


def convert_wrn_state_dict(state: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(``build_classifier`` options: depth, widen_factor, num_classes, channels; our state dict) for a
    RobustBench-style WRN state dict. ValueError naming the key when the layout does not fit."""
    tensors = _unwrap(state)
    if "init_conv.weight" in tensors or "logits.weight" in tensors:
        raise ValueError("this is DeepMind's DMWideResNet layout (init_conv / logits), not the TRADES / "
                         "RobustBench WideResNet one; its 'SAME' padding is not reproduced here")
    for required in ("conv1.weight", "fc.weight", "fc.bias", "bn1.weight", "block1.layer.0.conv1.weight"):
        if required not in tensors:
            raise ValueError(f"not a RobustBench-style WRN state dict: {required!r} missing")
    converted: dict[str, torch.Tensor] = {}
    counts = {g: 0 for g in ("1", "2", "3")}
    blocks: list[tuple[str, int, str, str, torch.Tensor]] = []
    for key, value in tensors.items():
        if key.startswith("sub_block1."):
            continue
        match = _BLOCK_KEY.match(key)
        if match:
            group, index, part, leaf = match.groups()
            counts[group] = max(counts[group], int(index) + 1)
            blocks.append((group, int(index), part, leaf, value))
        elif key == "conv1.weight" or key.startswith("fc."):
            converted[key] = value
        elif key.startswith("bn1."):
            converted["bn." + key.removeprefix("bn1.")] = value
        else:
            raise ValueError(f"unexpected key {key!r} for a RobustBench-style WRN state dict")
    per_group = counts["1"]
    if per_group < 1 or counts["2"] != per_group or counts["3"] != per_group:
        raise ValueError(f"block groups have {counts['1']}, {counts['2']}, {counts['3']} blocks; expected "
                         "the same number in each")
    for group, index, part, leaf, value in blocks:
        name = "shortcut" if part == "convShortcut" else part
        converted[f"blocks.{(int(group) - 1) * per_group + index}.{name}.{leaf}"] = value
    width = tensors["block1.layer.0.conv1.weight"].shape[0]
    if width % 16:
        raise ValueError(f"block1.layer.0.conv1.weight has {width} output channels, not a multiple of 16")
    options = {"depth": 6 * per_group + 4, "widen_factor": width // 16,
               "num_classes": int(tensors["fc.weight"].shape[0]),
               "channels": int(tensors["conv1.weight"].shape[1])}  # fmt: skip
    return options, converted


def read_state_dict(path: Path | str) -> Mapping[str, Any]:
    """A ``.safetensors`` file, or a ``.pt`` / ``.pth`` / ``.bin`` file read with torch's weights-only loader
    (tensors and plain containers only: no code runs)."""
    source = Path(path)
    if not source.is_file():
        raise ValueError(f"{source}: no such file")
    if source.suffix == ".safetensors":
        return load_file(str(source))
    state = load_weights_only(source, what="weights")
    if not isinstance(state, Mapping):
        raise ValueError(f"{source}: expected a state dict, got {type(state).__name__}")
    return state


def import_wrn(
    source: Path | str,
    out_dir: Path | str,
    *,
    image_size: int = 32,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    activation: Activation = "relu",
) -> ImageClassifier:
    """Convert the WRN state dict in ``source`` into a classifier directory ``out_dir`` (``model.safetensors``
    + ``config.json``, for ``load_classifier`` and ``job``-free model names under ``CDP_MODEL_DIR``).

    ``mean`` / ``std``: the normalisation the original applied before ``conv1`` (RobustBench's WideResNet:
    none, i.e. 0 / 1, the default here). The model is checked to load strictly before anything is written.
    """
    options, state = convert_wrn_state_dict(read_state_dict(source))
    channels = options.pop("channels")
    model = build_classifier(
        "wrn", num_classes=options.pop("num_classes"), channels=channels, image_size=image_size,
        mean=mean if mean is not None else [0.0] * channels, std=std if std is not None else [1.0] * channels,
        activation=activation, **options,
    )
    normalize = {k: v for k, v in model.state_dict().items() if k.startswith("normalize.")}
    try:
        model.load_state_dict({**state, **normalize}, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{source}: the converted weights do not fit a WRN-{options['depth']}-"
                         f"{options['widen_factor']} ({exc})") from exc
    model.eval()
    save_classifier(model, out_dir, config={"converted_from": Path(source).name,
                                            "layout": "robustbench-wrn"})  # fmt: skip
    return model
