"""Dependencies of the routes (``Annotated`` aliases): settings, store, job service, repository, caller.

They are ``async def`` because none of them blocks: FastAPI runs a plain ``def`` dependency in its
threadpool, one thread hop per dependency and request (three extra hops on a submission, which under
50 concurrent clients queue behind the route bodies for threads and the GIL)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from api import auth
from core.jobs.records import JobRepository
from core.jobs.service import JobService
from core.settings import Settings
from core.storage import ObjectStore


async def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_store(request: Request) -> ObjectStore:
    return request.app.state.store


async def get_service(request: Request) -> JobService:
    return request.app.state.service


async def get_repo(request: Request) -> JobRepository:
    return request.app.state.service.repo


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
StoreDep = Annotated[ObjectStore, Depends(get_store)]
ServiceDep = Annotated[JobService, Depends(get_service)]
RepoDep = Annotated[JobRepository, Depends(get_repo)]


# Who is calling (a team and its role), authenticated by api.auth.Gate before the route runs.
CallerDep = auth.CallerDep
