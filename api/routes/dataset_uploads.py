"""Presigned uploads of large data sets (MinIO / S3 stores): ``POST /datasets/uploads`` answers a PUT URL
and an upload id; the client PUTs the file straight to the store; ``POST /datasets/uploads/{id}/complete``
validates it and registers it as a data set. The staged object is removed on completion (valid or not), and
uploads never completed are removed once they expire (on this team's next ``POST /datasets/uploads``)."""

from __future__ import annotations

import secrets
import tempfile
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Response
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field

from api.deps import CallerDep, SettingsDep, StoreDep
from api.problems import ProblemError, responses
from api.routes import uploads
from api.routes.datasets import Dataset, _dataset, upload_errors
from core.formats.uploads import UploadError
from core.jobs.datasets import register_upload
from core.jobs.errors import StorageQuotaExceeded
from core.jobs.registry import PREFIX, Registry, now, owner_digest
from core.storage import ObjectNotFound

router = APIRouter(prefix="/datasets/uploads", tags=["datasets"])
UploadId = Annotated[str, PathParam(pattern=r"^[0-9a-f]{24}$",
                                    description="the id POST /datasets/uploads gave")]


class UploadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str = Field(pattern=uploads.NAME_PATTERN)
    num_classes: int | None = Field(default=None, ge=1, le=100_000)


class PresignedUpload(BaseModel):
    upload_id: str
    url: str = Field(description="PUT the file's bytes here (no other headers needed)")
    method: str = "PUT"
    expires_at: str
    max_bytes: int = Field(description="CDP_MAX_UPLOAD_BYTES: a larger file is refused at completion")
    complete: str = Field(description="POST here once the PUT succeeded")


def _staging(owner: str, upload_id: str = "") -> str:
    return f"{PREFIX}/staging/{owner_digest(owner)}/" + (f"{upload_id}/" if upload_id else "")


def _sweep(store: Any, owner: str) -> None:
    """Remove this team's staged uploads that expired without being completed."""
    for info in list(store.list(_staging(owner))):
        if info.key.endswith("/pending.json"):
            try:
                pending = store.get_json(info.key)
            except (ObjectNotFound, ValueError):
                continue
            if pending.get("expires_at", "") < now():
                _discard(store, owner, info.key.split("/")[-2])


def _discard(store: Any, owner: str, upload_id: str) -> None:
    for info in list(store.list(_staging(owner, upload_id))):
        store.delete(info.key)


@router.post("", status_code=201, response_model=PresignedUpload, operation_id="createDatasetUpload",
             summary="Start a presigned upload of a large data set (MinIO / S3 stores)",
             responses=responses(400, 401, 409, 422, 503))
def create_upload(body: UploadRequest, caller: CallerDep, store: StoreDep, settings: SettingsDep
                  ) -> PresignedUpload:
    presign = getattr(store, "presigned_put_url", None)
    if presign is None:
        raise ProblemError(409, "Not available", "presigned uploads need the MinIO store; upload with POST "
                           "/datasets (multipart) instead", slug="presigned-uploads-unavailable")
    _sweep(store, caller.team)
    upload_id = secrets.token_hex(12)
    expires = settings.presign_expiry_s
    expires_at = (datetime.now(UTC) + timedelta(seconds=expires)).isoformat().replace("+00:00", "Z")
    store.put_json(_staging(caller.team, upload_id) + "pending.json",
                   {"owner": caller.team, "name": body.name, "num_classes": body.num_classes,
                    "created_at": now(), "expires_at": expires_at})
    url = presign(_staging(caller.team, upload_id) + "file", expires=expires)
    return PresignedUpload(upload_id=upload_id, url=url, expires_at=expires_at,
                           max_bytes=settings.max_upload_bytes,
                           complete=f"/datasets/uploads/{upload_id}/complete")


@router.post("/{upload_id:modelid}/complete", status_code=201, response_model=Dataset,
             operation_id="completeDatasetUpload", summary="Validate a presigned upload and register it",
             responses={200: {"description": "this team already has this file", "model": Dataset},
                        **responses(401, 404, 409, 413, 422, 429, 503)})
async def complete_upload(upload_id: UploadId, response: Response, caller: CallerDep, store: StoreDep,
                          settings: SettingsDep) -> Dataset:
    record, created = await anyio.to_thread.run_sync(partial(_complete, store, settings, caller.team,
                                                             upload_id))
    response.status_code = 201 if created else 200
    response.headers["Location"] = f"/datasets/{record['id']}"
    return _dataset(record)


def _complete(store: Any, settings: Any, owner: str, upload_id: str) -> tuple[dict[str, Any], bool]:
    staging = _staging(owner, upload_id)
    try:
        pending = store.get_json(staging + "pending.json")
    except (ObjectNotFound, ValueError):
        raise ProblemError(404, "Not found", f"no upload {upload_id}", slug="upload-not-found") from None
    if pending.get("expires_at", "") < now():
        _discard(store, owner, upload_id)
        raise ProblemError(404, "Not found", f"upload {upload_id} expired", slug="upload-not-found")
    try:
        info = store.stat(staging + "file")
    except ObjectNotFound:
        raise ProblemError(409, "Nothing uploaded", f"PUT the file to the upload's URL before completing "
                           f"upload {upload_id}", slug="upload-empty") from None
    try:
        if info.size > settings.max_upload_bytes:
            raise ProblemError(413, "Request body too large", f"the upload has {info.size} bytes, over "
                               f"CDP_MAX_UPLOAD_BYTES = {settings.max_upload_bytes}",
                               slug="request-body-too-large")
        with tempfile.TemporaryDirectory(prefix="cdp-presigned-") as tmp:
            local = Path(tmp) / "upload"
            store.download_file(staging + "file", local)
            with open(local, "rb") as fh:
                try:
                    return register_upload(Registry(store), owner, pending["name"], fh,
                                           max_uncompressed=settings.max_uncompressed_bytes,
                                           quota_bytes=settings.quota_storage_bytes,
                                           num_classes=pending.get("num_classes"), source="presigned")
                except (UploadError, StorageQuotaExceeded) as exc:
                    raise upload_errors(exc) from None
    finally:
        _discard(store, owner, upload_id)  # valid or not, the staged object goes
