"""Object-store keys and Redis keys of a job: the storage layout in one place."""

from __future__ import annotations

import hashlib

PREFIX = "jobs"
RECORD_TTL_S = 7 * 24 * 3600  # Redis mirrors expire; the store keeps the record
IDEMPOTENCY_TTL_S = 48 * 3600  # how long an Idempotency-Key stays bound to its job


def job_prefix(job_id: str) -> str:
    return f"{PREFIX}/{job_id}/"


def record_key(job_id: str) -> str:
    return f"{PREFIX}/{job_id}/job.json"


def shard_key(job_id: str, shard: int) -> str:
    """The shard's npz (keys image/label/...): written last, so its presence means the shard is complete."""
    return f"{PREFIX}/{job_id}/shards/{shard}.npz"


def shard_npy_keys(job_id: str, shard: int) -> tuple[str, str]:
    """The shard's .npy pair (uint8 N x H x W x C images, int64 labels) that training memory-maps."""
    return (f"{PREFIX}/{job_id}/shards/{shard}.images.npy", f"{PREFIX}/{job_id}/shards/{shard}.labels.npy")


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


INDEX_PREFIX = "index/"


def owner_index_prefix(owner: str) -> str:
    """Empty markers ``index/<owner digest>/<job id>`` list an owner's jobs without reading them all."""
    return f"{INDEX_PREFIX}{hashlib.sha256(owner.encode()).hexdigest()[:32]}/"


def active_key(job_id: str) -> str:
    """An empty marker per non-terminal job: the reconciler lists ``active/`` instead of every job ever."""
    return f"active/{job_id}"


ACTIVE_PREFIX = "active/"


def idempotency_key(owner: str, key: str) -> str:
    """The durable binding of an Idempotency-Key to its job (survives a Redis that lost its data)."""
    return f"idempotency/{_owner_key_digest(owner, key)}.json"


def _owner_key_digest(owner: str, key: str) -> str:
    return hashlib.sha256(f"{owner}\0{key}".encode()).hexdigest()


# --- Redis ---
def redis_record(job_id: str) -> str:
    return f"cdp:job:{job_id}"


def redis_progress(job_id: str) -> str:
    return f"cdp:job:{job_id}:progress"


def redis_cancel(job_id: str) -> str:
    return f"cdp:job:{job_id}:cancel"


def redis_shards(job_id: str) -> str:
    return f"cdp:job:{job_id}:shards"


def redis_lock(job_id: str) -> str:
    return f"cdp:lock:{job_id}"


def redis_idempotency(owner: str, key: str) -> str:
    return f"cdp:idem:{_owner_key_digest(owner, key)}"


def redis_lease(job_id: str, unit: str) -> str:
    return f"cdp:lease:{job_id}:{unit}"


def redis_fence(job_id: str) -> str:
    """Hash unit -> the last fencing token handed out for it."""
    return f"cdp:job:{job_id}:fence"


def redis_units(job_id: str) -> str:
    """Hash unit -> ``pending:<message id>`` | ``taken:<message id>`` (see core.jobs.leases)."""
    return f"cdp:job:{job_id}:units"


def redis_last_error(job_id: str) -> str:
    """Hash unit -> the last infrastructure error that made the unit give up its lease."""
    return f"cdp:job:{job_id}:last-error"


REDIS_RECONCILE_LOCK = "cdp:lock:reconcile"
