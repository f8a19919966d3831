"""Liveness and readiness probes."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel

from api.deps import RedisDep, StoreDep
from api.problems import ProblemError, responses

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    checks: dict[str, str] = {}


@router.get("/healthz", response_model=Health, operation_id="healthz", summary="The process is alive")
def healthz() -> Health:
    return Health()


@router.get("/readyz", response_model=Health, operation_id="readyz",
            summary="Redis and the object store answer", responses=responses(503))
def readyz(redis: RedisDep, store: StoreDep) -> Health:
    failures = []
    try:
        redis.ping()
    except Exception as exc:  # any client error means "not ready"
        failures.append(f"redis: {type(exc).__name__}: {exc}")
    try:
        store.ping()
    except Exception as exc:
        failures.append(f"storage: {type(exc).__name__}: {exc}")
    if failures:
        raise ProblemError(503, "Not ready", "; ".join(failures), slug="not-ready")
    return Health(checks={"redis": "ok", "storage": "ok"})
