"""Registered models (``model:<id>``): an uploaded archive (zip or tar of a diffusers ``save_pretrained``
directory, the hub's flat layout included, or of a classifier directory), a classifier's ``.safetensors`` with
its ``config.json`` as two parts, or a finished training job's model (``from_job``). No torch here: the check
(load + one forward pass) runs in a subprocess, :mod:`core.jobs.model_check`.

Archives are unpacked member by member into a temporary folder: absolute paths, ``..``, links and special
files are refused, the declared and the actually inflated sizes are bounded, and only ``.json``,
``.safetensors`` and ``.bin`` files are kept (``.bin`` weights are read by torch's weights-only loader).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from core.formats.uploads import UploadError
from core.jobs.registry import Registry, entry_id, model_prefix, now, sha256_stream

KEPT_SUFFIXES = frozenset({".json", ".safetensors", ".bin"})
CHECK_TIMEOUT_S = 300
_PIECE = 1 << 20


def _safe_name(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    drive = len(name) > 1 and name[1] == ":"
    if name.startswith(("/", "\\")) or "\\" in name or drive or ".." in path.parts:
        raise UploadError("file", f"archive member {name[:80]!r} has an absolute path or '..'; refused")
    return path


def _copy_bounded(stream: BinaryIO, target: Path, budget: list[int], name: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as out:
        while chunk := stream.read(_PIECE):
            budget[0] -= len(chunk)
            if budget[0] < 0:
                raise UploadError("file", f"{name[:80]}: the archive inflates beyond the limit")
            out.write(chunk)


def extract_archive(source: BinaryIO, target: Path, *, max_uncompressed: int) -> Path:
    """Unpack a zip or tar upload into ``target``; returns the model's root folder inside it."""
    budget = [max_uncompressed]
    source.seek(0)
    if zipfile.is_zipfile(source):
        source.seek(0)
        with zipfile.ZipFile(source) as archive:
            members = [i for i in archive.infolist() if not i.is_dir()]
            for info in members:
                _safe_name(info.filename)
            if sum(i.file_size for i in members) > max_uncompressed:
                raise UploadError("file", f"the archive declares more than {max_uncompressed} "
                                  "uncompressed bytes")
            for info in members:
                path = _safe_name(info.filename)
                if path.suffix in KEPT_SUFFIXES and not path.name.startswith("."):
                    with archive.open(info) as stream:
                        _copy_bounded(stream, target.joinpath(*path.parts), budget, info.filename)
    else:
        source.seek(0)
        try:
            archive = tarfile.open(fileobj=source, mode="r:*")
        except (tarfile.TarError, OSError):
            raise UploadError("file", "not a zip or tar archive of a model directory") from None
        with archive:
            members = archive.getmembers()
            for info in members:
                _safe_name(info.name)
                if not (info.isfile() or info.isdir()):
                    raise UploadError("file", f"archive member {info.name[:80]!r} is a link or special file")
            if sum(i.size for i in members if i.isfile()) > max_uncompressed:
                raise UploadError("file", f"the archive declares more than {max_uncompressed} "
                                  "uncompressed bytes")
            for info in members:
                path = PurePosixPath(info.name)
                if info.isfile() and path.suffix in KEPT_SUFFIXES and not path.name.startswith("."):
                    stream = archive.extractfile(info)
                    assert stream is not None
                    _copy_bounded(stream, target.joinpath(*path.parts), budget, info.name)
    root = target
    while True:  # one folder around everything (a zip of the directory itself)
        entries = [p for p in root.iterdir()]
        if len(entries) == 1 and entries[0].is_dir():
            root = entries[0]
            continue
        break
    if not any(root.iterdir()):
        raise UploadError("file", "the archive holds no model files (.json, .safetensors, .bin)")
    return root


def run_check(directory: Path) -> dict[str, Any]:
    """Load the model in a subprocess and run one forward pass; UploadError("file", why) when it fails."""
    try:
        done = subprocess.run([sys.executable, "-m", "core.jobs.model_check", str(directory)],
                              capture_output=True, text=True, timeout=CHECK_TIMEOUT_S,
                              env=_child_env())
    except subprocess.TimeoutExpired:
        raise UploadError("file", f"loading the model took longer than {CHECK_TIMEOUT_S} s") from None
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    try:
        result = json.loads(lines[-1])
    except (IndexError, ValueError):
        raise UploadError("file", "the model could not be loaded (its check crashed)") from None
    if "error" in result:
        raise UploadError("file", f"the model failed to load or run: {result['error']}")
    return result


def _child_env() -> dict[str, str]:
    import os

    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def register_model(registry: Registry, owner: str, name: str, upload: BinaryIO | None, *,
                   max_uncompressed: int, quota_bytes: int | None, config: bytes | None = None,
                   directory: Path | None = None,
                   source: str = "upload", kind: str | None = None) -> tuple[dict[str, Any], bool]:
    """Validate and register a model: from ``upload`` (an archive, or with ``config`` a classifier's
    safetensors), or from a local ``directory`` (a training job's model). ``(record, created)``."""
    with tempfile.TemporaryDirectory(prefix="cdp-model-") as tmp:
        work = Path(tmp) / "model"
        work.mkdir()
        if directory is not None:
            root, sha256, size = directory, _tree_digest(directory), 0
        else:
            assert upload is not None
            sha256, size = sha256_stream(upload)
            if config is not None:
                sha256 = hashlib.sha256((sha256 + hashlib.sha256(config).hexdigest()).encode()).hexdigest()
        new_id = entry_id(owner, "models", sha256)
        try:
            return registry.get("models", new_id, scope=owner), False
        except LookupError:
            pass
        registry.check_quota(owner, size, quota_bytes)
        if directory is None:
            assert upload is not None
            if config is not None:
                _classifier_parts(upload, config, work, max_uncompressed)
                root = work
            else:
                root = extract_archive(upload, work, max_uncompressed=max_uncompressed)
        checked = run_check(root)
        if kind is not None and checked["kind"] != kind:
            raise UploadError("kind", f"the file is a {checked['kind']} model, not a {kind} model")
        files = {model_prefix(new_id) + p.relative_to(root).as_posix(): p
                 for p in sorted(root.rglob("*")) if p.is_file() and p.suffix in KEPT_SUFFIXES}
        stored = sum(p.stat().st_size for p in files.values())
        registry.check_quota(owner, stored, quota_bytes)
        record = {"id": new_id, "name": name, "owner": owner, **checked, "sha256": sha256,
                  "size": size or stored, "stored_bytes": stored, "source": source, "created_at": now()}
        registry.add("models", record, files)
    return record, True


def _classifier_parts(weights: BinaryIO, config: bytes, work: Path, max_uncompressed: int) -> None:
    try:
        document = json.loads(config)
    except (UnicodeDecodeError, ValueError):
        raise UploadError("config", "config is not valid JSON") from None
    if not isinstance(document, dict) or not isinstance(document.get("model"), dict):
        raise UploadError("config", "config must be the classifier config.json the service writes "
                          "({\"format\": ..., \"model\": {\"arch\": ...}})")
    (work / "config.json").write_bytes(config)
    weights.seek(0)
    head = weights.read(8)
    weights.seek(0)
    if len(head) < 8 or int.from_bytes(head, "little") > 100_000_000:
        raise UploadError("file", "file is not a .safetensors file")
    with open(work / "model.safetensors", "wb") as out:
        shutil.copyfileobj(weights, out, _PIECE)


def _tree_digest(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(path.relative_to(directory).as_posix().encode() + b"\0")
        with open(path, "rb") as fh:
            while chunk := fh.read(_PIECE):
                digest.update(chunk)
    return digest.hexdigest()
