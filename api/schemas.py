"""The response models of the /jobs routes (:mod:`api.routes.jobs`): pages, artifacts and the typed metrics of
each job kind. The request models (the specs) and the job record live in :mod:`core.specs`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from core.specs import JobKind, JobRecord


class JobPage(BaseModel):
    items: list[JobRecord]
    next_page_token: str | None = Field(default=None, description="pass as page_token for the next page")


class Artifact(BaseModel):
    name: str = Field(examples=["shards/0.npz"])
    size: int
    sha256: str | None
    url: str = Field(description="presigned URL (MinIO) or this API's download route (local store)")


class ArtifactList(BaseModel):
    job_id: str
    complete: bool = Field(description="true once manifest.json exists (the job's outputs are final)")
    items: list[Artifact]


class Interval(BaseModel):
    mean: float | None
    std: float | None = None
    ci95: list[float] | None = Field(default=None, description="95 % Student-t interval of the mean")
    n: int
    seeds: list[int] = []
    values: list[float] = []


class EvaluationMetrics(BaseModel):
    """What an evaluation job measured (fractions in [0, 1]; worst: correct under every attack)."""

    count: int
    clean_acc: float
    worst_acc: float
    pgd_ce_acc: float | None = None
    pgd_cw_acc: float | None = None
    autoattack_acc: float | None = None
    eps: float
    steps: int
    attacks: list[str]
    seconds: float
    sanity: dict[str, str] = Field(description="check -> pass | fail (zero_gradients, randomness, "
                                   "probability_outputs, step_monotonicity)")
    warnings: list[str] = []


class ExperimentResult(BaseModel):
    """Per arm and metric: statistics over seeds; per non-reference arm: paired differences to the
    reference arm (same seeds)."""

    reference: str
    interval: str
    arms: dict[str, dict[str, Any]] = Field(description="arm -> metric -> mean, std, ci95, n, seeds, values "
                                            "(and synthetic_share)")
    paired: dict[str, dict[str, Interval | str]] = Field(description="arm -> metric -> paired difference")
    runs: list[dict[str, Any]]
    children: dict[str, dict[str, str]]


class GenerationMetrics(BaseModel):
    """What a generation job measured (see README: from the pseudo-labelling classifier, and independent
    of it); fields a job did not compute are null."""

    model_config = ConfigDict(extra="allow")
    generated: int | None = Field(default=None, description="images generated (before any selection)")
    class_histogram: list[int] | None = None
    mean_confidence: float | None = None
    mean_entropy: float | None = None
    separability_margin: float | None = None
    mean_feature_cosine: float | None = None
    label_agreement: float | None = Field(default=None, description="null without a judge")
    label_agreement_source: str | None = None
    outlier_fraction: float | None = None
    near_duplicates: int | None = None
    near_duplicate_fraction: float | None = None
    nn_distance_median: float | None = None
    class_entropy_normalized: float | None = None
    class_share_min: float | None = None
    class_share_max: float | None = None
    tstr_accuracy: float | None = Field(default=None, description="with `tstr: true`")
    sampling_seconds: float | None = None
    images_per_s: float | None = None
    warnings: list[str] = Field(default_factory=list, description="sample-quality warnings: outliers above "
                                "5 %, near-copies above 1 %, judge agreement below 90 %, a class under half "
                                "or over twice its balanced share; empty when none")


class TrainingMetrics(BaseModel):
    """What a training job measured: per-epoch history and, for classifier / trades with ``final_eval``, the
    clean and robust accuracy on the test split."""

    model_config = ConfigDict(extra="allow")
    history: list[dict[str, Any]] = Field(default_factory=list, description="one entry per epoch")
    test: dict[str, Any] | None = Field(default=None, description="clean_acc, robust_acc, ...")


class JobMetrics(BaseModel):
    job_id: str
    kind: JobKind
    metrics: dict[str, Any] = Field(
        examples=[{"count": 512, "class_histogram": [51, 52, 50, 49, 53, 50, 52, 51, 52, 52],
                   "mean_confidence": 0.93, "mean_entropy": 0.2, "separability_margin": 0.31,
                   "mean_feature_cosine": 0.12, "label_agreement": 0.91, "label_agreement_source": "judge",
                   "outlier_fraction": 0.01, "near_duplicate_fraction": 0.0, "nn_distance_median": 0.09,
                   "class_entropy_normalized": 0.998, "tstr_accuracy": 0.87, "images_per_s": 35.2}]
    )
    generation: GenerationMetrics | None = Field(default=None, description="generation jobs: typed metrics")
    training: TrainingMetrics | None = Field(default=None, description="training jobs: typed metrics")
    evaluation: EvaluationMetrics | None = Field(default=None, description="evaluation jobs: typed metrics")
    experiment: ExperimentResult | None = Field(default=None, description="experiment jobs: typed result")
