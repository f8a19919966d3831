"""What every job spec shares: model and job references (never paths), the server's limits, priorities.

Models are referenced either as ``job:<id>`` (the output of a finished training job) or as a bare name in
the server's model directory; a name is never a path (no slashes, no ``..``). Every number of a spec is
bounded; the limits that operators tune (count, steps, batch size, epochs, lambda) come from
:class:`core.settings.Settings` (``CDP_MAX_*``).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, ValidationInfo, WithJsonSchema
from pydantic_core import PydanticCustomError

from core.options import DATASET_NAMES
from core.settings import get_settings

JOB_ID_PATTERN = r"[0-9a-f]{24}"
# Both are matched against the whole string (re.fullmatch): "$" would also match before a final newline.
_JOB_REF = re.compile(rf"job:({JOB_ID_PATTERN})")
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# The same names as _MODEL_NAME without "..", written without a lookahead (JSON Schema and pydantic agree)
_MODEL_REF_PATTERN = (rf"^(job:{JOB_ID_PATTERN}|model:[0-9a-f]{{24}}|"
                      r"[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*\.?)$")
_REGISTERED_MODEL = re.compile(r"model:[0-9a-f]{24}")
DATASET_REF_PATTERN = r"ds:[0-9a-f]{24}"
_DATASET_REF = re.compile(DATASET_REF_PATTERN)
_SHORT = 40


def cross_field(message: str) -> PydanticCustomError:
    """A rule between fields that JSON Schema cannot state: a 422 whose ``errors[].type`` is
    ``cross_field`` (the OpenAPI document states these rules in words)."""
    return PydanticCustomError("cross_field", "{rule}", {"rule": message})


def short(value: object) -> str:
    """``repr(value)`` cut to a short prefix: validation messages never echo a long input back."""
    text = repr(value)
    return text if len(text) <= _SHORT else text[:_SHORT] + f"... ({len(text)} characters)"


# Seeds up to 2**53 - 1: the largest integer every JSON client carries exactly (JavaScript's numbers, and
# generators that pass bounds through a float); the trainers take anything below 2**63.
MAX_SEED = 2**53 - 1
JobPriority = Literal["low", "normal", "high"]
PRIORITY_DOC = ("orders this job's units among the waiting ones of their queue (cdp.generate, cdp.train, "
                 "cdp.evaluate): high before normal before low")
Timestep = Annotated[int, Field(ge=0, le=100_000)]


def _check_model_ref(value: str) -> str:
    if _JOB_REF.fullmatch(value) or _REGISTERED_MODEL.fullmatch(value):
        return value
    if _MODEL_NAME.fullmatch(value) and ".." not in value:
        return value
    raise ValueError(
        f"{short(value)} is neither 'job:<24 hex digits>', 'model:<24 hex digits>' nor a model name "
        "(letters, digits, '.', '_', '-'; no paths)"
    )


def _check_job_ref(value: str) -> str:
    if not _JOB_REF.fullmatch(value):
        raise ValueError(f"{short(value)} is not a job reference of the form 'job:<24 hex digits>'")
    return value


ModelRef = Annotated[
    str,
    Field(max_length=64, pattern=_MODEL_REF_PATTERN),
    AfterValidator(_check_model_ref),
    Field(description="`job:<id>` of a training job (one not finished yet makes this job wait for it), "
          "`model:<id>` of a registered model (POST /models), or a model name from the server's model "
          "directory", examples=["job:0190a1b2c3d4e5f6a7b8c9d0", "digits-unet"]),
]
JobRef = Annotated[str, Field(max_length=28, pattern=rf"^job:{JOB_ID_PATTERN}$"),
                   AfterValidator(_check_job_ref), Field(examples=["job:0190a1b2c3d4e5f6a7b8c9d0"])]


def _check_dataset_ref(value: str) -> str:
    if value in DATASET_NAMES or _DATASET_REF.fullmatch(value):
        return value
    raise ValueError(f"{short(value)} is neither a built-in data set ({', '.join(DATASET_NAMES)}) nor "
                     "'ds:<24 hex digits>' (an uploaded data set, POST /datasets)")


DatasetRef = Annotated[
    str, AfterValidator(_check_dataset_ref),
    WithJsonSchema({"anyOf": [{"type": "string", "enum": list(DATASET_NAMES)},
                              {"type": "string", "pattern": rf"^{DATASET_REF_PATTERN}$"}],
                    "description": "a built-in data set, or `ds:<id>` of one your team uploaded "
                                   "(POST /datasets)",
                    "examples": ["digits", "ds:0190a1b2c3d4e5f6a7b8c9d0"]}),
]


def job_id_of(ref: str) -> str | None:
    """The job id in a ``job:<id>`` reference, or None for a model name."""
    match = _JOB_REF.fullmatch(ref)
    return match.group(1) if match else None


# Which setting bounds each numeric spec field (the server's limits, CDP_MAX_*).
_SERVER_LIMITS = {
    "count": "max_count", "top_k": "max_count", "steps": "max_steps", "batch_size": "max_batch_size",
    "lam": "max_lambda", "epochs": "max_epochs", "limit": "max_count", "eval_samples": "max_count",
    "devices": "max_devices",
}
SERVER_LIMITS = _SERVER_LIMITS  # public: the API documents these bounds in its OpenAPI document


def server_limits() -> dict[str, int | float]:
    """The limits in force now (CDP_MAX_*), as frozen into a job's plan at submission; a whole number is
    an int (a record shows ``max_count: 100000``, not ``100000.0``)."""
    settings = get_settings()
    values = {name: getattr(settings, name) for name in sorted(set(_SERVER_LIMITS.values()))}
    return {name: int(v) if float(v).is_integer() else float(v) for name, v in values.items()}


def within_server_limit(value: float | None, info: ValidationInfo) -> float | None:
    """A field validator: ``value`` must not exceed the setting named for its field in _SERVER_LIMITS.

    A worker re-reading an accepted spec passes the limits frozen at submission as the validation context
    (``{"limits": {...}}``), so a worker with other settings never rejects a job the API accepted."""
    name = info.field_name or ""
    setting = _SERVER_LIMITS[name]
    frozen = info.context.get("limits") if isinstance(info.context, dict) else None
    limit = frozen[setting] if frozen and setting in frozen else getattr(get_settings(), setting)
    if value is not None and value > limit:
        raise ValueError(f"{name}={value} exceeds the server limit {limit}")
    return value
