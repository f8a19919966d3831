"""Object-store keys and Redis keys of a job: the layout of DESIGN.md in one place."""

from __future__ import annotations

import hashlib

PREFIX = "jobs"


def job_prefix(job_id: str) -> str:
    return f"{PREFIX}/{job_id}/"


def record_key(job_id: str) -> str:
    return f"{PREFIX}/{job_id}/job.json"


def shard_key(job_id: str, shard: int) -> str:
    return f"{PREFIX}/{job_id}/shards/{shard}.npz"


def metrics_key(job_id: str) -> str:
    return f"{PREFIX}/{job_id}/metrics.json"


def manifest_key(job_id: str) -> str:
    return f"{PREFIX}/{job_id}/manifest.json"


def preview_key(job_id: str) -> str:
    return f"{PREFIX}/{job_id}/preview.png"


def checkpoint_prefix(job_id: str) -> str:
    return f"{PREFIX}/{job_id}/checkpoints/"


def model_prefix(job_id: str) -> str:
    """Where a finished training job leaves its model (diffusers pipeline or classifier directory)."""
    return f"{PREFIX}/{job_id}/model/"


def owner_index_prefix(owner: str) -> str:
    """Empty markers ``index/<owner digest>/<job id>`` list an owner's jobs without reading them all."""
    return f"index/{hashlib.sha256(owner.encode()).hexdigest()[:32]}/"


# --- Redis ---
def r_record(job_id: str) -> str:
    return f"cdp:job:{job_id}"


def r_progress(job_id: str) -> str:
    return f"cdp:job:{job_id}:progress"


def r_cancel(job_id: str) -> str:
    return f"cdp:job:{job_id}:cancel"


def r_shards(job_id: str) -> str:
    return f"cdp:job:{job_id}:shards"


def r_attempts(job_id: str) -> str:
    return f"cdp:job:{job_id}:attempts"


def r_finalize(job_id: str) -> str:
    return f"cdp:job:{job_id}:finalize-enqueued"


def r_lock(job_id: str) -> str:
    return f"cdp:lock:{job_id}"


def r_idempotency(owner: str, key: str) -> str:
    digest = hashlib.sha256(f"{owner}\0{key}".encode()).hexdigest()
    return f"cdp:idem:{digest}"
