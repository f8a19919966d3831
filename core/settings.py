"""One settings object for the whole service, read from ``CDP_*`` environment variables.

Use :func:`get_settings` (cached) everywhere; tests override through the environment and
``get_settings.cache_clear()``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_QUEUE = r"cdp\.(generate|train|evaluate|control)"
# CDP_WORKER_QUEUES: names of core.jobs.queue's queues, comma-separated
_QUEUE_LIST = rf"^{_QUEUE}(,{_QUEUE})*$"

# Credentials from MinIO's documentation and examples; anyone can guess them.
_WELL_KNOWN_MINIO_CREDENTIALS = {("minioadmin", "minioadmin"), ("minio", "minio123")}


class Settings(BaseSettings):
    """Service settings. Every field can be set as ``CDP_<FIELD>`` (e.g. ``CDP_DATA_ROOT``)."""

    # hide_input_in_errors: a validation error must not echo the environment (it holds secrets) into logs.
    model_config = SettingsConfigDict(
        env_prefix="CDP_", env_file=None, extra="ignore", hide_input_in_errors=True
    )

    # Where datasets are read from (CIFAR-10 batches, GTSRB folders, npz files).
    data_root: Path = Path("var/data")
    # Named models the service may load (diffusion models and classifiers); never arbitrary paths.
    model_dir: Path = Path("var/models")
    # "auto" picks CUDA when present, else CPU; "cuda:N" pins a worker to GPU N (one worker per GPU). A train
    # job with devices: n runs its ranks on cuda:N .. cuda:N+n-1.
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$")

    # --- service (api/ and worker/) ---
    # Celery broker and result backend, and the job state kept in Redis: record mirrors and live progress,
    # leases, cancel flags, quotas, Idempotency-Keys (the store holds the durable copy).
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Local scratch space of a worker (downloaded models, training work dirs).
    work_dir: Path = Path("var/work")
    # Bounds on job specs (HTTP 422 beyond them).
    max_count: int = Field(default=100_000, ge=1)
    max_steps: int = Field(default=1000, ge=1)
    max_batch_size: int = Field(default=1024, ge=1)
    max_epochs: int = Field(default=400, ge=1)
    max_lambda: float = Field(default=1e6, gt=0)
    # Most data-parallel processes one train job may ask for (TrainSpec.devices); a worker host needs that
    # many GPUs (or CPU cores) for such a job.
    max_devices: int = Field(default=8, ge=1)
    # Images per generation shard (one Celery task per shard).
    shard_size: int = Field(default=1000, ge=1)
    # API keys: a JSON file of hashed keys (sha256), each with its team and role ("member" or "admin"),
    # written by `cdp keys create --team T [--role admin] --file PATH`. Unset (and no CDP_API_TOKENS): auth
    # is off and every caller is the single local team "anonymous". Re-read when the file changes.
    api_keys_file: Path | None = None
    # Deprecated (use CDP_API_KEYS_FILE): plaintext bearer token -> team, as JSON
    # CDP_API_TOKENS='{"s3cret": "team-a"}'. Still honoured (role "member"); the API logs a warning.
    api_tokens: dict[str, str] = Field(default_factory=dict)
    # Signs the web console's session cookies (/ui). Unset: a random secret per API process, so sessions end
    # when it restarts and are not shared between processes (set it when running more than one).
    session_secret: SecretStr | None = None
    # Quotas per team (HTTP 429 with Retry-After beyond them): jobs not yet finished at once (an
    # experiment counts once, not its child jobs), ...
    quota_concurrent_jobs: int = Field(default=100, ge=1)
    # ... images requested by generation jobs per UTC day, ...
    quota_images_per_day: int = Field(default=10_000_000, ge=1)
    # ... and training epochs per UTC day (train jobs: epochs; experiments: epochs x arms x seeds).
    quota_epochs_per_day: int = Field(default=100_000, ge=1)
    # Longest a client may long-poll `GET /jobs/{id}?wait=S` (or a pipeline's), seconds; a larger S waits this
    # long. Each waiting request holds an event-loop task and polls the record every half second.
    max_wait_seconds: float = Field(default=60.0, ge=0, le=3600)
    # Largest request body the API reads, bytes (HTTP 413 beyond it).
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    # Uploads (POST /datasets, POST /models, presigned uploads): the largest file, bytes (HTTP 413), the
    # most bytes an archive may inflate to (declared and actually read; HTTP 422), and what one team may
    # store in the registry, bytes (HTTP 429 with the figures).
    max_upload_bytes: int = Field(default=2 * 1024**3, ge=1024)
    max_uncompressed_bytes: int = Field(default=8 * 1024**3, ge=1024)
    quota_storage_bytes: int = Field(default=20 * 1024**3, ge=0)
    # Log format of the API and the workers: "json" (one object per line with job_id, unit, owner, attempt
    # where known) or "text".
    log_format: Literal["json", "text"] = "json"
    # Port of a worker's Prometheus exporter (0 = none). With PROMETHEUS_MULTIPROC_DIR set (prefork pools)
    # it serves the metrics of all the worker's processes.
    worker_metrics_port: int = Field(default=0, ge=0, le=65535)
    # Tracking (off by default): an MLflow tracking URI (http://host:5000, sqlite:///mlflow.db, or file:///dir
    # with MLFLOW_ALLOW_FILE_STORE=true) that gets one run per training job and experiment, ...
    mlflow_tracking_uri: str | None = None
    # ... in this MLflow experiment; ...
    mlflow_experiment: str = "contrastive-dp"
    # ... and TensorBoard event files under each training job's and experiment's artifacts (tensorboard/).
    tensorboard: bool = False
    # Queues a worker serves when Celery's -Q is not given, comma-separated: any of cdp.generate (generation
    # shards and finalize), cdp.train, cdp.evaluate, cdp.control (reconciler, experiment steps).
    worker_queues: str = Field(default="cdp.generate,cdp.train,cdp.evaluate", pattern=_QUEUE_LIST)
    # Longest one unit of work (a shard, a finalize, a training run, an evaluation) may run. Enforced
    # cooperatively by the progress callback on every pool (and by Celery's hard limit under prefork); past it
    # the job fails.
    task_time_limit_s: int = Field(default=6 * 3600, ge=1)
    # Backstop only: Redis hands an unacknowledged message to another worker after this long. Leases make a
    # redelivered unit that is still running a no-op, so this need not exceed the time limit.
    visibility_timeout_s: int = Field(default=3600, ge=1)
    # A unit started more often than this (its worker lost, or a dependency failing, each time) fails its job
    # instead of looping.
    max_attempts: int = Field(default=3, ge=1)
    # A running unit holds a lease in Redis for this long; its worker renews it (see lease_renew_s). When the
    # worker dies, the reconciler re-enqueues the unit once the lease has expired.
    lease_ttl_s: float = Field(default=30.0, gt=0)
    # How often a worker renews the lease of the unit it runs (must be well below lease_ttl_s).
    lease_renew_s: float = Field(default=5.0, gt=0)
    # How often the reconciler (Celery beat -> the control queue) scans the non-terminal jobs in the store.
    reconcile_interval_s: float = Field(default=15.0, gt=0)

    # torch.compile of the UNet and the feature extractor in generation jobs: "off", "inductor" (GPU hosts;
    # the first compilation takes minutes on a CPU), "cudagraphs" (inductor + CUDA graphs on CUDA), or
    # "aot_eager" (graph capture only).
    compile: Literal["off", "inductor", "aot_eager", "cudagraphs"] = "off"
    # The UNet in channels_last (NHWC) memory order during sampling.
    channels_last: bool = False
    # bfloat16 autocast for the UNet forward during sampling on CUDA (guidance gradient and update in fp32).
    bf16: bool = False

    # --- object storage (core/storage) ---
    # "local": a directory (the embedded default); "minio": a MinIO / S3 server.
    store_backend: Literal["local", "minio"] = "local"
    # Root directory of the local store.
    store_root: Path = Path("var/store")
    # Where this process reaches MinIO: host:port, or http(s)://host:port (a scheme overrides minio_secure).
    minio_endpoint: str = "127.0.0.1:9000"
    # Credentials of the service's own MinIO user (not the root account).
    minio_access_key: str = ""
    minio_secret_key: SecretStr = SecretStr("")
    # Bucket holding every job's objects; created on first use when missing.
    minio_bucket: str = "cdp"
    # TLS to minio_endpoint.
    minio_secure: bool = False
    # Region requests and presigned URLs are signed for (MinIO's default is us-east-1).
    minio_region: str = "us-east-1"
    # Where API clients reach MinIO (presigned URLs are signed for this host); empty = minio_endpoint.
    minio_public_endpoint: str | None = None
    # Multipart upload part size in MiB (S3 minimum 5).
    minio_part_size_mib: int = Field(default=16, ge=5, le=5120)
    # Lifetime of presigned artifact URLs, seconds (S3 maximum 7 days).
    presign_expiry_s: int = Field(default=3600, ge=1, le=7 * 24 * 3600)
    # Let the service start with well-known default credentials (minioadmin/minioadmin). Never in production.
    allow_insecure_defaults: bool = False

    @model_validator(mode="after")
    def _refuse_unsafe_storage_credentials(self) -> Settings:
        if self.store_backend != "minio":
            return self
        secret = self.minio_secret_key.get_secret_value()
        if not self.minio_access_key or not secret:
            raise ValueError(
                "store_backend='minio' needs credentials: set CDP_MINIO_ACCESS_KEY and CDP_MINIO_SECRET_KEY"
            )
        placeholder = secret.startswith("change-me")  # the placeholder of .env.example
        well_known = (self.minio_access_key, secret) in _WELL_KNOWN_MINIO_CREDENTIALS or placeholder
        if well_known and not self.allow_insecure_defaults:
            raise ValueError(
                "refusing to start with MinIO's well-known credentials "
                f"(access key {self.minio_access_key!r}): set CDP_MINIO_ACCESS_KEY / CDP_MINIO_SECRET_KEY "
                "(and MINIO_ROOT_USER / MINIO_ROOT_PASSWORD), or "
                "set CDP_ALLOW_INSECURE_DEFAULTS=true for a throw-away local setup"
            )
        return self

    @model_validator(mode="after")
    def _renew_well_below_lease(self) -> Settings:
        if self.lease_renew_s * 2 > self.lease_ttl_s:
            raise ValueError(
                f"lease_renew_s={self.lease_renew_s} must be at most half of lease_ttl_s={self.lease_ttl_s}, "
                "or a healthy worker loses its lease between two renewals"
            )
        return self


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, built once from the environment."""
    return Settings()
