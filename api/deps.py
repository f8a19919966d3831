"""Dependencies of the routes (``Annotated`` aliases): settings, store, Redis, job service, owner."""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import Depends, Header, Request

from api.problems import ProblemError
from core.jobs.records import JobRepository
from core.jobs.service import JobService
from core.settings import Settings
from core.storage import ObjectStore

ANONYMOUS = "anonymous"


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_store(request: Request) -> ObjectStore:
    return request.app.state.store


def get_redis(request: Request) -> Any:
    return request.app.state.redis


def get_service(request: Request) -> JobService:
    return request.app.state.service


def get_repo(request: Request) -> JobRepository:
    return request.app.state.service.repo


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
StoreDep = Annotated[ObjectStore, Depends(get_store)]
RedisDep = Annotated[Any, Depends(get_redis)]
ServiceDep = Annotated[JobService, Depends(get_service)]
RepoDep = Annotated[JobRepository, Depends(get_repo)]


def get_owner(
    settings: SettingsDep,
    authorization: Annotated[
        str | None, Header(description="`Bearer <token>` when the server has tokens")
    ] = None,
) -> str:
    """The caller: the owner (user or team) its bearer token maps to; "anonymous" when auth is off."""
    if not settings.api_tokens:
        return ANONYMOUS
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() == "bearer" and token:
        for known, owner in settings.api_tokens.items():
            if hmac.compare_digest(known.encode(), token.strip().encode()):
                return owner
    raise ProblemError(401, "Unauthorized", "a valid 'Authorization: Bearer <token>' header is required",
                       headers={"WWW-Authenticate": "Bearer"})


OwnerDep = Annotated[str, Depends(get_owner)]
