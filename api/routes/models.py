"""The /models routes: register a diffusion model or a classifier (an uploaded archive, a classifier's
safetensors + config.json, or ``{"from_job": "job:<id>"}``), list, read and delete a team's models. A model
is checked by loading it and running one forward pass, in a subprocess (the API never imports torch)."""

from __future__ import annotations

import tempfile
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Request, Response
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field
from starlette.formparsers import MultiPartException

from api.deps import CallerDep, RepoDep, SettingsDep, StoreDep
from api.problems import ProblemError, responses
from api.routes import uploads
from api.routes.datasets import upload_errors
from core.formats.uploads import UploadError
from core.jobs import keys
from core.jobs.artifacts import download_prefix
from core.jobs.errors import StorageQuotaExceeded
from core.jobs.models_registry import register_model
from core.jobs.registry import Registry
from core.specs import JOB_ID_PATTERN

router = APIRouter(prefix="/models", tags=["models"])
ModelId = Annotated[str, PathParam(pattern=r"^[0-9a-f]{24}$", description="a model id (24 hex digits)",
                                   examples=["0190a1b2c3d4e5f6a7b8c9d0"])]


class RegisteredModel(BaseModel):
    model_config = ConfigDict(extra="ignore", protected_namespaces=())
    id: str
    ref: str = Field(description="what a job's `model` / `classifier` field takes: `model:<id>`")
    name: str
    owner: str
    kind: Literal["diffusion", "classifier"]
    arch: str
    image_shape: list[int] = Field(description="H, W, C")
    num_classes: int | None = Field(description="classes (a classifier; a class-conditional diffusion model)")
    parameters: int
    sha256: str
    size: int
    source: str = Field(description="'upload' or 'job:<id>'")
    created_at: str


class ModelList(BaseModel):
    items: list[RegisteredModel]


class ModelFromJob(BaseModel):
    model_config = ConfigDict(extra="forbid")
    from_job: str = Field(pattern=rf"^job:{JOB_ID_PATTERN}$", description="a succeeded training job")
    name: str = Field(pattern=uploads.NAME_PATTERN)


# One documented content type, as for POST /datasets; JSON {"from_job", "name"} is accepted too.
UPLOAD_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {
        "type": "object", "required": ["name"], "title": "ModelUpload", "additionalProperties": False,
        "description": "exactly one of `file` and `from_job` (a rule between fields: cross_field)",
        "properties": {
            "from_job": {"type": "string", "pattern": rf"^job:{JOB_ID_PATTERN}$", "description": "instead "
                         "of `file`: promote the model of a succeeded training job of your team"},
            "file": {"type": "string", "format": "binary", "description": "a zip or tar of a diffusers "
                     "save_pretrained directory (or the hub's flat layout) or of a classifier directory; "
                     "or a "
                     "classifier's model.safetensors together with `config`"},
            "config": {"type": "string", "format": "binary", "description": "the classifier's config.json "
                       "(only with a .safetensors file)"},
            "name": {"type": "string", "pattern": uploads.NAME_PATTERN},
            "kind": {"type": "string", "enum": ["diffusion", "classifier"],
                     "description": "refuse the upload unless it is this kind"},
        }}},
}}}
DESCRIPTION = ("Multipart: `file` (an archive, or a classifier's model.safetensors with `config`) "
               "or `from_job`, with `name` and optionally `kind`; or `from_job` and `name` as a JSON object. "
               "The model is loaded and run once on its declared shape before it is stored. 201 with the "
               "model; 200 with the existing one when your team already registered the same file.")


def _model(record: dict[str, Any]) -> RegisteredModel:
    return RegisteredModel.model_validate({**record, "ref": f"model:{record['id']}"})


@router.post("", status_code=201, response_model=RegisteredModel, operation_id="createModel",
             summary="Register a diffusion model or classifier (upload, or a finished training job)",
             description=DESCRIPTION, openapi_extra=UPLOAD_BODY,
             responses={200: {"description": "this team already has this model",
                                                         "model": RegisteredModel},
                                                    **responses(400, 401, 404, 409, 413, 415, 422, 429, 503)})
async def create_model(request: Request, response: Response, caller: CallerDep, store: StoreDep,
                       repo: RepoDep, settings: SettingsDep) -> RegisteredModel:
    register = partial(register_model, Registry(store), caller.team,
                       max_uncompressed=settings.max_uncompressed_bytes,
                       quota_bytes=settings.quota_storage_bytes)
    try:
        if uploads.content_kind(request) == "json":
            body = await uploads.read_json(request, ModelFromJob)
            assert isinstance(body, ModelFromJob)
            record, created = await anyio.to_thread.run_sync(partial(_from_job, repo, store, register,
                                                                     caller.team, body))
        else:
            async with request.form(max_files=2, max_fields=uploads.MULTIPART_FIELDS) as form:
                if isinstance(form.get("from_job"), str) and form.get("file") is None:
                    body = uploads.validated(ModelFromJob, {"from_job": form["from_job"],
                                                            "name": form.get("name")})
                    assert isinstance(body, ModelFromJob)
                    record, created = await anyio.to_thread.run_sync(partial(
                        _from_job, repo, store, register, caller.team, body))
                    response.status_code = 201 if created else 200
                    return _model(record)
                file = uploads.form_file(form)
                config = uploads.form_file(form, "config", required=False)
                name = uploads.check_name(form.get("name"))
                kind = form.get("kind") or None
                if kind not in (None, "diffusion", "classifier"):
                    raise uploads.field_problem(422, "Validation error", "body.kind", "kind must be "
                                                "'diffusion' or 'classifier'", slug="validation-error")
                config_bytes = await config.read() if config is not None else None
                record, created = await anyio.to_thread.run_sync(partial(
                    register, name, file.file, config=config_bytes, kind=kind))  # type: ignore[union-attr]
    except (UploadError, StorageQuotaExceeded) as exc:
        raise upload_errors(exc) from None
    except MultiPartException as exc:
        raise ProblemError(400, "Bad request", f"malformed multipart body: {exc.message}",
                           slug="bad-request") from None
    response.status_code = 201 if created else 200
    response.headers["Location"] = f"/models/{record['id']}"
    return _model(record)


_PROMOTABLE = {"diffusion": "diffusion", "classifier": "classifier", "trades": "classifier"}


def _from_job(repo: Any, store: Any, register: Any, owner: str, body: ModelFromJob
              ) -> tuple[dict[str, Any], bool]:
    job = uploads.finished_job(repo, body.from_job, owner=owner, kind="train", what="training")
    job_id = job.id
    with tempfile.TemporaryDirectory(prefix="cdp-promote-") as tmp:
        local = Path(tmp) / "model"
        if download_prefix(store, keys.model_prefix(job_id), local) == 0:
            raise uploads.field_problem(422, "Invalid reference", "body.from_job", f"{body.from_job} left no "
                                        "model", slug="invalid-reference")
        return register(body.name, None, directory=local, source=body.from_job,
                        kind=_PROMOTABLE.get(str(job.input.get("kind"))))


@router.get("", response_model=ModelList, operation_id="listModels",
            summary="Your team's registered models (an admin: every team's)", responses=responses(401, 503))
def list_models(caller: CallerDep, store: StoreDep) -> ModelList:
    return ModelList(items=[_model(r) for r in Registry(store).list("models", scope=caller.scope)])


@router.get("/{model_id:modelid}", response_model=RegisteredModel, operation_id="getModel",
            summary="One model",
            responses=responses(401, 404, 503))
def get_model(model_id: ModelId, caller: CallerDep, store: StoreDep) -> RegisteredModel:
    return _model(uploads.registered(store, "models", model_id, scope=caller.scope))


@router.delete("/{model_id:modelid}", status_code=204, operation_id="deleteModel",
               summary="Delete a registered model (409 while an unfinished job uses it)",
               responses={204: {"description": "deleted"}, **responses(401, 404, 409, 503)})
def delete_model(model_id: ModelId, caller: CallerDep, store: StoreDep) -> Response:
    uploads.delete_registered(store, "models", model_id, scope=caller.scope)
    return Response(status_code=204)
