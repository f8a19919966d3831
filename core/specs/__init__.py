"""Job specs and the job record: the pydantic models the HTTP API accepts and the worker executes.

- :mod:`core.specs.common`: model and job references (never paths), the server's limits, priorities;
- :mod:`core.specs.generate`: the generation job (defaults: the paper's, from :mod:`core.options`);
- :mod:`core.specs.train`: training, evaluation and experiment jobs;
- :mod:`core.specs.record`: the job record with its progress, plan and links.

Everything is importable from ``core.specs``.
"""

from core.specs.common import (
    JOB_ID_PATTERN,
    SERVER_LIMITS,
    JobPriority,
    JobRef,
    ModelRef,
    Timestep,
    job_id_of,
    server_limits,
    short,
)
from core.specs.generate import GenerateSpec, SelectionSpec
from core.specs.record import (
    TERMINAL_STATUSES,
    JobKind,
    JobLinks,
    JobPlan,
    JobRecord,
    JobStatus,
    Progress,
    links_for,
)
from core.specs.train import (
    ARCH_OPTIONS,
    ArchOption,
    ArmGeneration,
    EvaluateSpec,
    EvaluationSettings,
    ExperimentArm,
    ExperimentSpec,
    ExperimentTrades,
    TrainSpec,
)

__all__ = [
    "ARCH_OPTIONS",
    "JOB_ID_PATTERN",
    "SERVER_LIMITS",
    "TERMINAL_STATUSES",
    "ArchOption",
    "ArmGeneration",
    "EvaluateSpec",
    "EvaluationSettings",
    "ExperimentArm",
    "ExperimentSpec",
    "ExperimentTrades",
    "GenerateSpec",
    "JobKind",
    "JobLinks",
    "JobPlan",
    "JobPriority",
    "JobRecord",
    "JobRef",
    "JobStatus",
    "ModelRef",
    "Progress",
    "SelectionSpec",
    "Timestep",
    "TrainSpec",
    "job_id_of",
    "links_for",
    "server_limits",
    "short",
]
