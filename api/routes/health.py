"""Liveness and readiness probes."""

from __future__ import annotations

import logging
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel

from api.deps import RepoDep, StoreDep
from api.problems import ProblemError, responses

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    checks: dict[str, str] = {}


@router.get("/healthz", response_model=Health, operation_id="healthz", summary="The process is alive")
def healthz() -> Health:
    return Health()


@router.get("/readyz", response_model=Health, operation_id="readyz",
            summary="Redis and the object store answer", responses=responses(503))
def readyz(repo: RepoDep, store: StoreDep) -> Health:
    failures = []
    # The reasons name the dependency and the kind of error, never its address or path (logged instead).
    try:
        repo.ping()
    except Exception as exc:  # any client error means "not ready"
        cause = exc.__cause__ or exc  # repo.ping's DependencyUnavailable carries the client's error
        log.warning("readyz: redis: %s: %s", type(cause).__name__, cause)
        failures.append(f"redis: unreachable ({type(cause).__name__})")
    try:
        store.ping()
    except Exception as exc:
        log.warning("readyz: storage: %s: %s", type(exc).__name__, exc)
        failures.append(f"storage: unavailable ({type(exc).__name__})")
    if failures:
        raise ProblemError(503, "Not ready", "; ".join(failures), slug="not-ready",
                           headers={"Retry-After": "5"})
    return Health(checks={"redis": "ok", "storage": "ok"})
