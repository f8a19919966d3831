"""Every succeeded generation job has ``dataset.npz`` (all shards, uint8 NHWC + int64), served by the
artifacts route and fetched by ``cdp download`` (its function, over the API client)."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest

from core.cli.download import download


def test_generation_job_exports_one_npz_that_download_fetches(stack, tmp_path) -> None:
    client = stack.client
    body = {"dataset": "digits", "model": "unet-t", "classifier": "cnn-t", "count": 19, "steps": 2,
            "schedule": "uniform", "batch_size": 8, "loss": "none", "seed": 1}
    job_id = client.post("/jobs/generate", json=body).json()["id"]
    job = stack.wait(job_id, until={"succeeded", "failed", "canceled"})
    assert job["status"] == "succeeded", job["error"]
    listing = client.get(f"/jobs/{job_id}/artifacts").json()
    entry = next(a for a in listing["items"] if a["name"] == "dataset.npz")

    out = download(client, job_id, tmp_path / "sub" / "set.npz", quiet=True)
    raw = out.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == entry["sha256"] and len(raw) == entry["size"]
    with np.load(out, allow_pickle=False) as npz:
        assert npz["image"].dtype == np.uint8 and npz["image"].shape == (19, 16, 16, 1)
        assert npz["label"].dtype == np.int64 and npz["label"].shape == (19,)
    parts = []
    for k in range(3):
        with np.load(io.BytesIO(stack.store.get_bytes(f"jobs/{job_id}/shards/{k}.npz"))) as s:
            parts.append(s["image"])
    with np.load(out, allow_pickle=False) as npz:
        assert np.array_equal(npz["image"], np.concatenate(parts))
    assert [p.name for p in out.parent.iterdir()] == ["set.npz"]  # no partial file left

    with pytest.raises(ValueError, match="no artifact"):
        download(client, job_id, tmp_path / "x", artifact="nope.npz", quiet=True)
    with pytest.raises(ValueError, match="404"):
        download(client, "0" * 24, tmp_path / "y", quiet=True)
