"""What the upload routes (``/datasets``, ``/models``) share: the request body (multipart or JSON), names, and
the problem documents for the registry's errors. The validation itself runs in a worker thread."""

from __future__ import annotations

import io
import json
import re
from typing import Any

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from api.problems import FieldError, ProblemError, clip
from core.jobs.errors import EntryInUse, EntryNotFound, StorageQuotaExceeded
from core.jobs.registry import Kind, Registry, jobs_using
from core.storage import ObjectStore

# POST bodies of these paths may be as large as CDP_MAX_UPLOAD_BYTES (api.auth.BodyLimit)
UPLOAD_PATHS = frozenset({"/datasets", "/models"})
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}$"
_NAME = re.compile(NAME_PATTERN)
MAX_JSON_BYTES = 64 * 1024
MULTIPART_FIELDS = 8


def field_problem(status: int, title: str, field: str, message: str, *, slug: str,
                  error_type: str | None = None) -> ProblemError:
    return ProblemError(status, title, clip(message), slug=slug,
                        errors=[FieldError(field=field, message=clip(message), type=error_type or slug)])


def check_name(value: object, field: str = "body.name") -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise field_problem(422, "Validation error", field, "name must be 1 to 64 letters, digits, spaces, "
                            "'.', '_' or '-', starting with a letter or digit", slug="validation-error")
    return value


def optional_int(value: object, field: str, *, low: int, high: int) -> int | None:
    if value in (None, ""):
        return None
    try:
        number = int(str(value))
    except ValueError:
        number = None
    if number is None or not low <= number <= high or str(number) != str(value).strip():
        raise field_problem(422, "Validation error", field, f"must be an integer in {low}..{high}",
                            slug="validation-error")
    return number


async def read_json(request: Request, model: type[BaseModel]) -> BaseModel:
    raw = await request.body()
    if len(raw) > MAX_JSON_BYTES:
        raise ProblemError(413, "Request body too large", f"a JSON body here is at most {MAX_JSON_BYTES} "
                           "bytes",
                           slug="request-body-too-large")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ProblemError(400, "Bad request", "the body is not valid JSON", slug="bad-request") from None
    return validated(model, data)


def validated(model: type[BaseModel], data: object) -> BaseModel:
    """``model`` from ``data``, or a 422 naming each bad field (``body.<field>``)."""
    try:
        return model.model_validate(data, strict=True)
    except ValidationError as exc:
        errors = [FieldError(field=".".join(["body", *(str(p) for p in e["loc"])]), message=clip(e["msg"]),
                             type=e["type"]) for e in exc.errors()]
        raise ProblemError(422, "Validation error", "; ".join(f"{e.field}: {e.message}" for e in errors),
                           slug="validation-error", errors=errors) from None


def form_file(form: Any, name: str = "file", *, required: bool = True) -> UploadFile | None:
    """The multipart part ``name`` as a file. A part sent without a filename (a plain field, as some clients
    send a binary body) is taken as the file's bytes (UTF-8, as the form parser decoded it)."""
    value = form.get(name)
    if isinstance(value, UploadFile):
        return value
    if isinstance(value, str):
        return UploadFile(io.BytesIO(value.encode("utf-8", "surrogateescape")), filename=name)
    if value is None and not required:
        return None
    # a rule between fields (a file, or from_job instead): the document states it in the body's description
    raise field_problem(422, "Validation error", f"body.{name}", f"{name}: send a file part named {name!r}, "
                        "or from_job instead", slug="validation-error", error_type="cross_field")


def content_kind(request: Request) -> str:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):  # the latter: no file part
        return "multipart"
    if ctype == "application/json":
        return "json"
    raise ProblemError(415, "Unsupported media type", "send multipart/form-data (a file upload) or "
                       "application/json ({\"from_job\": ...})", slug="unsupported-media-type")


def registry_problem(exc: Exception) -> ProblemError:
    if isinstance(exc, StorageQuotaExceeded):
        return ProblemError(429, "Quota exceeded", str(exc), slug="quota-storage-bytes",
                            headers={"Retry-After": "3600"})
    if isinstance(exc, EntryInUse):
        return ProblemError(409, "In use", str(exc), slug="in-use")
    if isinstance(exc, EntryNotFound):
        return ProblemError(404, "Not found", str(exc), slug="not-found")
    raise exc


# What a missing entry of each kind of the registry is called: noun, problem type.
NOT_FOUND: dict[Kind, tuple[str, str]] = {"datasets": ("data set", "dataset-not-found"),
                                          "models": ("model", "model-not-found")}


def not_found(kind: Kind, entry_id: str) -> ProblemError:
    noun, slug = NOT_FOUND[kind]
    return ProblemError(404, "Not found", f"no {noun} {entry_id}", slug=slug)


def registered(store: ObjectStore, kind: Kind, entry_id: str, *, scope: str | None) -> dict[str, Any]:
    """The registry's record of ``entry_id``: a 404 if there is none (or it is another team's)."""
    try:
        return Registry(store).get(kind, entry_id, scope=scope)
    except EntryNotFound:
        raise not_found(kind, entry_id) from None


def delete_registered(store: ObjectStore, kind: Kind, entry_id: str, *, scope: str | None) -> None:
    """Delete a registered entry: a 404 if there is none, a 409 while an unfinished job uses it."""
    try:
        Registry(store).delete(kind, entry_id, scope=scope, users=lambda ref: jobs_using(store, ref))
    except EntryNotFound:
        raise not_found(kind, entry_id) from None
    except EntryInUse as exc:
        raise registry_problem(exc) from None


def finished_job(repo: Any, ref: str, *, owner: str, kind: str, what: str) -> Any:
    """The record of ``from_job`` ``ref``: a succeeded ``kind`` job of the caller's team. An absent (or
    another team's) job is a 404, one of another kind or not succeeded a 409, as for job references in specs;
    ``what`` says what it must be ("generation", "training")."""
    from core.jobs.errors import JobNotFound

    try:
        job = repo.get(ref.removeprefix("job:"), owner=owner)
    except JobNotFound:
        raise field_problem(404, "Reference not found", "body.from_job", f"{ref} does not exist; it must "
                            f"be a succeeded {what} job of your team", slug="reference-not-found") from None
    if job.kind != kind or job.status != "succeeded":
        raise field_problem(409, "Reference not usable", "body.from_job", f"{ref} is a {job.status} "
                            f"{job.kind} job; it must be a succeeded {what} job of your team",
                            slug="reference-not-usable")
    return job
