"""The /datasets routes: upload (multipart ``file`` + ``name``), register a generation job's set
(``{"from_job": "job:<id>"}``), list (the built-ins too, read-only), read and delete a team's data sets.

An upload is spooled to a temporary file by the multipart parser (never whole in memory), validated and
written to the store in a worker thread (:func:`core.jobs.datasets.register_upload`); nothing is stored
unless it is valid, and an upload cut off halfway never reaches the handler.
"""

from __future__ import annotations

import tempfile
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Request, Response
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field
from starlette.convertors import Convertor, register_url_convertor
from starlette.formparsers import MultiPartException

from api.deps import CallerDep, RepoDep, ServiceDep, SettingsDep, StoreDep
from api.problems import ProblemError, responses
from api.routes import uploads
from core.formats.uploads import UploadError
from core.jobs.datasets import BUILTIN_DATASETS, builtin_entry, register_upload
from core.jobs.errors import StorageQuotaExceeded
from core.jobs.exports import export_key
from core.jobs.registry import Registry
from core.jobs.service import dataset_available
from core.specs import JOB_ID_PATTERN
from core.storage import ObjectNotFound

router = APIRouter(prefix="/datasets", tags=["datasets"])
DATASET_ID_REGEX = rf"[0-9a-f]{{24}}|{'|'.join(BUILTIN_DATASETS)}"


class _Segment(Convertor[str]):
    """A path segment matching ``regex``; other segments match no route (404 / 405, never a 422)."""

    def __init__(self, regex: str) -> None:
        self.regex = regex

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value
register_url_convertor("datasetid", _Segment(DATASET_ID_REGEX))
register_url_convertor("modelid", _Segment(r"[0-9a-f]{24}"))

DatasetId = Annotated[str, PathParam(pattern=rf"^({DATASET_ID_REGEX})$",
                                     description="a data set id (24 hex digits) or a built-in name",
                                     examples=["0190a1b2c3d4e5f6a7b8c9d0", "digits"])]


class Dataset(BaseModel):
    """A data set: uploaded by a team (``ref`` = ``ds:<id>``) or built in (read-only, ``ref`` = its name)."""

    model_config = ConfigDict(extra="ignore")
    id: str
    ref: str = Field(description="what a job's `dataset` field takes")
    name: str
    owner: str | None = Field(description="the uploading team; null for a built-in")
    builtin: bool = False
    available: bool = True
    num_images: int | None
    image_shape: list[int] = Field(description="H, W, C")
    num_classes: int
    class_counts: list[int] | None
    class_names: list[str] | None = None
    split: str = Field(description="'uploaded': the file's own train/test marks; 'seeded': a fixed seeded "
                       "stratified split (test 20 %, val 10 % of the rest, train the remainder); "
                       "'fixed': a built-in's split")
    split_counts: dict[str, int] | None = None
    sha256: str | None = Field(description="sha256 of the uploaded file")
    size: int | None = None
    source: str | None = Field(default=None, description="'upload', 'presigned' or 'job:<id>'")
    created_at: str | None


class DatasetList(BaseModel):
    items: list[Dataset]


class DatasetFromJob(BaseModel):
    model_config = ConfigDict(extra="forbid")
    from_job: str = Field(pattern=rf"^job:{JOB_ID_PATTERN}$", description="a succeeded generation job")
    name: str = Field(pattern=uploads.NAME_PATTERN)
    num_classes: int | None = Field(default=None, ge=1, le=100_000)


# One documented content type (multipart): openapi-python-client 0.29 cannot generate an operation with
# two. The same fields also come as JSON ({"from_job": ..., "name": ...}), as the description says.
UPLOAD_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {
        "type": "object", "required": ["name"], "title": "DatasetUpload", "additionalProperties": False,
        "description": "exactly one of `file` and `from_job` (a rule between fields: cross_field)",
        "properties": {
            "file": {"type": "string", "format": "binary", "description": "an .npz (image uint8 N x H x W x "
                     "C, label 0..K-1, optional split train/test) or a zip of <class>/<image> folders"},
            "from_job": {"type": "string", "pattern": rf"^job:{JOB_ID_PATTERN}$", "description": "instead "
                         "of `file`: register the dataset.npz of a succeeded generation job of your team"},
            "name": {"type": "string", "pattern": uploads.NAME_PATTERN},
            "num_classes": {"type": "integer", "minimum": 1, "maximum": 100_000,
                            "description": "K, when some classes have no image (default: largest label + 1)"},
        }}},
}}}
DESCRIPTION = ("Multipart: `file` (an .npz or an image-folder zip) or `from_job`, with `name` and optionally "
               "`num_classes`; or the same `from_job`, `name`, `num_classes` as a JSON object. 201 with the "
               "data set; 200 with the existing one when your team already uploaded the same file. Without "
               "a `split` array the service splits with a fixed seed: 20 % of each class test, 10 % of the "
               "rest val, the remainder train.")


def _dataset(record: dict[str, Any]) -> Dataset:
    ref = record["id"] if record.get("builtin") else f"ds:{record['id']}"
    return Dataset.model_validate({**record, "ref": ref})


def upload_errors(exc: Exception) -> ProblemError:
    if isinstance(exc, UploadError):
        return uploads.field_problem(422, "Invalid upload", f"body.{exc.field}", exc.message,
                                     slug="invalid-upload")
    return uploads.registry_problem(exc)


@router.post("", status_code=201, response_model=Dataset, operation_id="createDataset",
             summary="Upload a data set (npz or image-folder zip), or register a generation job's set",
             description=DESCRIPTION, openapi_extra=UPLOAD_BODY,
             responses={200: {"description": "this team already has this file",
                                                         "model": Dataset},
                                                    **responses(400, 401, 404, 409, 413, 415, 422, 429, 503)})
async def create_dataset(request: Request, response: Response, caller: CallerDep, store: StoreDep,
                         repo: RepoDep, settings: SettingsDep) -> Dataset:
    registry = Registry(store)
    register = partial(register_upload, registry, caller.team,
                       max_uncompressed=settings.max_uncompressed_bytes,
                       quota_bytes=settings.quota_storage_bytes)
    if uploads.content_kind(request) == "json":
        body = await uploads.read_json(request, DatasetFromJob)
        assert isinstance(body, DatasetFromJob)
        record, created = await anyio.to_thread.run_sync(partial(
            _from_job, repo, store, register, caller.team, body))
    else:
        try:
            async with request.form(max_files=1, max_fields=uploads.MULTIPART_FIELDS) as form:
                name = uploads.check_name(form.get("name"))
                classes = uploads.optional_int(form.get("num_classes"), "body.num_classes", low=1,
                                               high=100_000)
                if isinstance(form.get("from_job"), str) and form.get("file") is None:
                    body = uploads.validated(DatasetFromJob, {"from_job": form["from_job"], "name": name,
                                                              "num_classes": classes})
                    assert isinstance(body, DatasetFromJob)
                    record, created = await anyio.to_thread.run_sync(partial(
                        _from_job, repo, store, register, caller.team, body))
                    response.status_code = 201 if created else 200
                    response.headers["Location"] = f"/datasets/{record['id']}"
                    return _dataset(record)
                file = uploads.form_file(form)
                try:
                    record, created = await anyio.to_thread.run_sync(partial(
                        register, name, file.file, num_classes=classes))  # type: ignore[union-attr]
                except (UploadError, StorageQuotaExceeded) as exc:
                    raise upload_errors(exc) from None
        except MultiPartException as exc:
            raise ProblemError(400, "Bad request", f"malformed multipart body: {exc.message}",
                               slug="bad-request") from None
    response.status_code = 201 if created else 200
    response.headers["Location"] = f"/datasets/{record['id']}"
    return _dataset(record)


def _from_job(repo: Any, store: Any, register: Any, owner: str, body: DatasetFromJob
              ) -> tuple[dict[str, Any], bool]:
    job_id = uploads.finished_job(repo, body.from_job, owner=owner, kind="generate", what="generation").id
    with tempfile.TemporaryDirectory(prefix="cdp-from-job-") as tmp:
        local = Path(tmp) / "dataset.npz"
        try:
            store.download_file(export_key(job_id), local)
        except ObjectNotFound:
            raise uploads.field_problem(422, "Invalid reference", "body.from_job", f"{body.from_job} has no "
                                        "dataset.npz (it finished before exports existed)",
                                        slug="invalid-reference") from None
        with open(local, "rb") as fh:
            try:
                return register(body.name, fh, num_classes=body.num_classes, source=body.from_job)
            except (UploadError, StorageQuotaExceeded) as exc:
                raise upload_errors(exc) from None


@router.get("", response_model=DatasetList, operation_id="listDatasets",
            summary="The built-in data sets and your team's uploads (an admin: every team's)",
            responses=responses(401, 503))
def list_datasets(caller: CallerDep, store: StoreDep, service: ServiceDep) -> DatasetList:
    root = service.data_root
    builtins = [builtin_entry(name, available=root is None or dataset_available(name, root))
                for name in BUILTIN_DATASETS]
    uploaded = Registry(store).list("datasets", scope=caller.scope)
    return DatasetList(items=[_dataset(r) for r in [*builtins, *uploaded]])


@router.get("/{dataset_id:datasetid}", response_model=Dataset, operation_id="getDataset",
            summary="One data set",
            responses=responses(401, 404, 503))
def get_dataset(dataset_id: DatasetId, caller: CallerDep, store: StoreDep, service: ServiceDep) -> Dataset:
    if dataset_id in BUILTIN_DATASETS:
        root = service.data_root
        available = root is None or dataset_available(dataset_id, root)
        return _dataset(builtin_entry(dataset_id, available=available))
    return _dataset(uploads.registered(store, "datasets", dataset_id, scope=caller.scope))


@router.delete("/{dataset_id:datasetid}", status_code=204, operation_id="deleteDataset",
               summary="Delete an uploaded data set (409 while an unfinished job uses it, or a built-in)",
               responses={204: {"description": "deleted"}, **responses(401, 404, 409, 503)})
def delete_dataset(dataset_id: DatasetId, caller: CallerDep, store: StoreDep) -> Response:
    if dataset_id in BUILTIN_DATASETS:
        raise ProblemError(409, "Read-only", f"{dataset_id} is a built-in data set (read-only)",
                           slug="builtin-read-only")
    uploads.delete_registered(store, "datasets", dataset_id, scope=caller.scope)
    return Response(status_code=204)
