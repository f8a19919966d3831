"""core.models classifiers: shapes and features, normalisation inside the model, checkpoints that round-trip
to
identical logits, and clear errors for bad options and corrupt checkpoint directories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from core.models import ImageClassifier, build_classifier, load_classifier, save_classifier

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(arch: str, *, channels: int = 1, image_size: int = 16, **kw: object) -> ImageClassifier:
    options = {"small_cnn": {"width": 8, "feature_dim": 16}, "wrn": {"depth": 10, "widen_factor": 1}}[arch]
    return build_classifier(
        arch, num_classes=10, channels=channels, image_size=image_size, **{**options, **kw}
    )


@pytest.mark.parametrize(
    ("arch", "channels", "size", "feature_dim"),
    [("small_cnn", 1, 16, 16), ("wrn", 3, 32, 64), ("wrn", 1, 16, 64)],
    ids=["small_cnn-16", "wrn-10-1-32", "wrn-10-1-16"],
)
def test_logits_are_the_last_layer_applied_to_features(arch: str, channels: int, size: int, feature_dim: int):
    torch.manual_seed(0)
    model = tiny(arch, channels=channels, image_size=size).eval()
    x = torch.rand(4, channels, size, size)
    features = model.features(x)
    assert features.shape == (4, feature_dim) == (4, model.feature_dim)
    assert model.num_classes == 10
    logits = model(x)
    assert logits.shape == (4, 10)
    assert torch.allclose(logits, model.fc(features), atol=1e-6)


def test_wrn_28_10_has_the_papers_640_features() -> None:
    model = build_classifier("wrn", num_classes=10, channels=3, image_size=32)
    assert model.feature_dim == 640
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 1 + 2 * 12  # stem + two convs in each of (28 - 4) / 6 = 4 blocks x 3 groups


def test_normalisation_happens_inside_the_model() -> None:
    torch.manual_seed(0)
    mean, std = [0.3], [0.2]
    model = tiny("small_cnn", mean=mean, std=std).eval()
    plain = tiny("small_cnn", mean=[0.0], std=[1.0]).eval()
    plain.load_state_dict(model.state_dict() | {"normalize.mean": plain.normalize.mean,
                                                "normalize.std": plain.normalize.std})  # fmt: skip
    x = torch.rand(3, 1, 16, 16)
    assert torch.allclose(model(x), plain((x - 0.3) / 0.2), atol=1e-5)
    assert not torch.allclose(model(x), plain(x), atol=1e-3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"arch": "resnet"}, "unknown classifier arch"),
        ({"arch": "wrn", "depth": 12}, "6n \\+ 4"),
        ({"arch": "small_cnn", "image_size": 18}, "divisible by 4"),
        ({"arch": "small_cnn", "dropout": 0.1}, "unknown option"),
        ({"arch": "small_cnn", "channels": 2}, "channels"),
        ({"arch": "small_cnn", "mean": [0.5, 0.5]}, "mean has 2 values"),
        ({"arch": "small_cnn", "std": [0.0]}, "std must be positive"),
    ],
    ids=["arch", "depth", "size", "option", "channels", "mean-length", "std-zero"],
)
def test_build_classifier_rejects_bad_options(kwargs: dict[str, object], message: str) -> None:
    base: dict[str, object] = {"num_classes": 10, "channels": 1, "image_size": 16}
    arch = kwargs.pop("arch")
    with pytest.raises(ValueError, match=message):
        build_classifier(arch, **{**base, **kwargs})  # type: ignore[arg-type]


def test_wrong_input_shape_is_named() -> None:
    with pytest.raises(ValueError, match=r"N x 1 x H x W.*\(2, 3, 16, 16\)"):
        tiny("small_cnn")(torch.rand(2, 3, 16, 16))


@pytest.mark.parametrize("arch", ["small_cnn", "wrn"])
def test_checkpoint_round_trip_gives_identical_logits(tmp_path: Path, arch: str) -> None:
    torch.manual_seed(1)
    model = tiny(arch, mean=[0.25], std=[0.3])
    # one training step so weights and BatchNorm statistics differ from a fresh build
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.rand(8, 1, 16, 16), torch.randint(0, 10, (8,))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    model.eval()
    save_classifier(model, tmp_path / "clf", config={"dataset": "digits", "note": "test"})
    assert {p.name for p in (tmp_path / "clf").iterdir()} == {"model.safetensors", "config.json"}
    loaded = load_classifier(tmp_path / "clf")
    assert not loaded.training and type(loaded) is type(model)
    probe = torch.rand(5, 1, 16, 16)
    assert torch.equal(loaded(probe), model(probe))
    assert torch.equal(loaded.features(probe), model.features(probe))
    document = json.loads((tmp_path / "clf" / "config.json").read_text())
    assert document["model"]["arch"] == arch and document["metadata"]["note"] == "test"
    fresh = tiny(arch, mean=[0.25], std=[0.3]).eval()
    assert not torch.equal(fresh(probe), model(probe))  # the round trip is not trivially satisfied


def _saved(tmp_path: Path) -> Path:
    save_classifier(tiny("small_cnn"), tmp_path / "c")
    return tmp_path / "c"


def test_load_classifier_reports_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a directory"):
        load_classifier(tmp_path / "absent")
    path = _saved(tmp_path)
    (path / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{bad json")
    with pytest.raises(ValueError, match="model.safetensors: unreadable"):
        load_classifier(path)
    (path / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="model.safetensors missing"):
        load_classifier(path)
    (path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_classifier(path)
    (path / "config.json").unlink()
    with pytest.raises(ValueError, match="config.json missing"):
        load_classifier(path)


def test_load_classifier_rejects_weights_that_do_not_match_the_config(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    document = json.loads((path / "config.json").read_text())
    document["model"]["width"] = 16
    (path / "config.json").write_text(json.dumps(document))
    with pytest.raises(ValueError, match="do not match"):
        load_classifier(path)
    document["model"]["arch"] = "transformer"
    (path / "config.json").write_text(json.dumps(document))
    with pytest.raises(ValueError, match="transformer"):
        load_classifier(path)
    (path / "config.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="not a cdp-classifier"):
        load_classifier(path)


def test_save_classifier_needs_a_built_model_and_json_metadata(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="build_classifier"):
        save_classifier(torch.nn.Linear(2, 2), tmp_path / "x")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        save_classifier(tiny("small_cnn"), tmp_path / "y", config={"bad": object()})
    assert not (tmp_path / "y" / "model.safetensors").exists()
