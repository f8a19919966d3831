"""core.jobs.models_registry without the service: archives (zip, tar, the hub's flat layout), the model check
(one forward pass), and what is refused. The check runs in-process here (the service runs it in a
subprocess; tests/service/test_models_registry.py covers that path)."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch

from core.formats.uploads import UploadError
from core.jobs import model_check, models_registry
from core.jobs.registry import Registry
from core.storage import MemoryStore


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from core.models import build_classifier, build_unet, save_classifier, save_diffusion

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    save_diffusion(build_unet("tiny", image_size=16, channels=1), root / "unet")
    save_classifier(build_classifier("small_cnn", num_classes=10, channels=1, image_size=16, width=4,
                                     feature_dim=8), root / "cnn")
    return root


@pytest.fixture
def registry(monkeypatch) -> Registry:
    monkeypatch.setattr(models_registry, "run_check", _in_process)
    return Registry(MemoryStore())


def _in_process(directory: Path) -> dict:
    try:
        return model_check.check(directory)
    except Exception as exc:
        raise UploadError("file", f"the model failed to load or run: {exc}") from None


def _zip(root: Path) -> io.BytesIO:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(root).as_posix())
    buffer.seek(0)
    return buffer


def _tar(root: Path, *, symlink: bool = False) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        archive.add(root, arcname="model")
        if symlink:
            info = tarfile.TarInfo("model/link.json")
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            archive.addfile(info)
    buffer.seek(0)
    return buffer


def _register(registry: Registry, upload, **kw):
    return models_registry.register_model(registry, "team", "m", upload, max_uncompressed=1 << 28,
                                          quota_bytes=None, **kw)


def test_hub_flat_layout_in_a_tar(registry, tiny, tmp_path) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    for path in (tiny / "unet" / "unet").iterdir():
        shutil.copy(path, flat / path.name)
    shutil.copy(next((tiny / "unet" / "scheduler").glob("*.json")), flat / "scheduler_config.json")
    shutil.copy(tiny / "unet" / "model_index.json", flat / "model_index.json")
    (flat / "README.md").write_text("dropped")
    record, created = _register(registry, _tar(flat))
    assert created and record["kind"] == "diffusion" and record["image_shape"] == [16, 16, 1]
    stored = {i.key.rsplit("/", 1)[-1] for i in registry.store.list("registry/models/")}
    assert "README.md" not in stored and "model_index.json" in stored and "record.json" in stored


def test_classifier_parts_and_wrong_kind(registry, tiny) -> None:
    weights = io.BytesIO((tiny / "cnn" / "model.safetensors").read_bytes())
    record, _ = _register(registry, weights, config=(tiny / "cnn" / "config.json").read_bytes())
    assert record["kind"] == "classifier" and record["num_classes"] == 10 and record["parameters"] > 0
    with pytest.raises(UploadError) as err:
        _register(registry, _zip(tiny / "unet"), kind="classifier")
    assert err.value.field == "kind"


def test_a_forward_that_fails_and_weights_that_do_not_fit(registry, tiny, tmp_path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny / "unet", broken)
    config = json.loads((broken / "unet" / "config.json").read_text())
    (broken / "unet" / "config.json").write_text(json.dumps({**config, "sample_size": 5}))
    with pytest.raises(UploadError, match="failed to load or run"):
        _register(registry, _zip(broken))
    cnn_config = json.loads((tiny / "cnn" / "config.json").read_text())
    cnn_config["model"]["width"] = 8  # the weights are of width 4
    with pytest.raises(UploadError, match="do not match"):
        _register(registry, io.BytesIO((tiny / "cnn" / "model.safetensors").read_bytes()),
                  config=json.dumps(cnn_config).encode())
    assert list(registry.store.list("registry/")) == []


def test_bin_weights_go_through_the_weights_only_loader(registry, tiny, tmp_path) -> None:
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path}/pwned",))

    import pickle

    evil = tmp_path / "evil"
    shutil.copytree(tiny / "unet", evil)
    for weights in (evil / "unet").glob("*.safetensors"):
        weights.unlink()
    (evil / "unet" / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(UploadError):
        _register(registry, _zip(evil))
    assert not (tmp_path / "pwned").exists()


def test_links_and_bombs_in_archives_are_refused(registry, tiny, tmp_path) -> None:
    with pytest.raises(UploadError, match="link or special"):
        _register(registry, _tar(tiny / "cnn", symlink=True))
    with pytest.raises(UploadError, match="uncompressed"):
        models_registry.register_model(registry, "team", "m", _zip(tiny / "unet"), max_uncompressed=1000,
                                       quota_bytes=None)
    with pytest.raises(UploadError, match="no model files"):
        _register(registry, _zip_of({"notes.txt": b"x"}))


def _zip_of(members: dict[str, bytes]) -> io.BytesIO:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    buffer.seek(0)
    return buffer
