"""RFC 9457 problem details: every error the API returns is ``application/problem+json``.

Body: ``type``, ``title``, ``status``, ``detail``, ``instance``; validation errors add ``errors``, one entry
per bad field with its path (``body.count``, ``query.page_size``, ...).

A dependency that cannot be reached (Redis, the object store) is a 503 with ``Retry-After``, naming which
one but not where it lives. Any other unexpected error is a 500 answered by :class:`CatchAll`, a plain ASGI
middleware that, unlike Starlette's outermost error middleware, does not re-raise afterwards, so the
server keeps the keep-alive connection usable for the client's next request.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message, Receive, Scope, Send

from api.asgi import HttpMiddleware
from core.jobs.dependencies import REDIS_ERRORS, is_dependency_error
from core.jobs.errors import DependencyUnavailable
from core.storage import StorageError

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
RETRY_AFTER_S = 5


class FieldError(BaseModel):
    field: str = Field(description="dotted path of the offending field", examples=["body.count"])
    message: str
    type: str = ""


class Problem(BaseModel):
    type: str = Field(default="about:blank", examples=["/problems/validation-error"])
    title: str
    status: int
    detail: str = ""
    instance: str = ""
    errors: list[FieldError] | None = None


class ProblemError(Exception):
    """Raise from routes to answer with a problem document."""

    def __init__(self, status: int, title: str, detail: str = "", *, slug: str | None = None,
                 errors: list[FieldError] | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail or title)
        self.status, self.title, self.detail = status, title, detail
        self.slug = slug or title.lower().replace(" ", "-")
        self.errors, self.headers = errors, headers


def problem_response(request: Request, status: int, title: str, detail: str = "", *, slug: str,
                     errors: list[FieldError] | None = None, headers: dict[str, str] | None = None
                     ) -> JSONResponse:
    body = Problem(type=f"/problems/{slug}", title=title, status=status, detail=detail,
                   instance=str(request.url.path), errors=errors)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, media_type=PROBLEM_JSON,
                        headers=headers)


def _field_path(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(part) for part in loc)


def validation_problem(request: Request, errors: list[FieldError], detail: str | None = None) -> JSONResponse:
    summary = "; ".join(f"{e.field}: {e.message}" for e in errors)
    return problem_response(request, 422, "Validation error", clip(detail or summary, 1000),
                            slug="validation-error", errors=errors)


# A reply never echoes much of what it was sent: each message is cut to MESSAGE_CHARS characters and at most
# MAX_ERRORS field errors are listed (a 20 MB string in a field gives a reply of a few hundred bytes).
MESSAGE_CHARS = 300
MAX_ERRORS = 20


def clip(text: str, limit: int = MESSAGE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        raw = exc.errors()
        if any(e.get("type") == "json_invalid" for e in raw):
            return problem_response(request, 400, "Malformed JSON", "the request body is not valid JSON",
                                    slug="malformed-json")
        errors = [FieldError(field=clip(_field_path(e.get("loc", ())), 120),
                             message=clip(str(e.get("msg", ""))), type=str(e.get("type", "")))
                  for e in raw[:MAX_ERRORS]]
        return validation_problem(request, errors)

    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(request, exc.status, exc.title, exc.detail, slug=exc.slug, errors=exc.errors,
                                headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        titles = {400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found",
                  405: "Method not allowed", 413: "Request body too large"}
        title = titles.get(exc.status_code, "Error")
        detail = str(exc.detail or "")
        if exc.status_code == 413 and "CDP_MAX_UPLOAD_BYTES" not in detail:
            detail = f"the request body exceeds {getattr(app.state, 'max_body_bytes', '?')} bytes"
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405 and headers and "Allow" in headers:
            headers = {**headers, "Allow": _allowed_methods(app, request, headers["Allow"])}
        return problem_response(request, exc.status_code, title, clip(detail),
                                slug=title.lower().replace(" ", "-"), headers=headers)

    async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
        if not is_dependency_error(exc):  # a missing object or a bad key that a route did not expect
            return _internal(request, exc)
        return unavailable_response(request, exc)

    for error in (*REDIS_ERRORS, StorageError, DependencyUnavailable, OperationalError):
        app.add_exception_handler(error, _unavailable)
    app.add_middleware(CatchAll)


def dependency_of(exc: BaseException) -> str:
    if isinstance(exc, DependencyUnavailable):
        return exc.dependency
    return "storage" if isinstance(exc, StorageError) else "redis"


def unavailable_response(request: Request, exc: BaseException) -> JSONResponse:
    dependency = dependency_of(exc)
    log.warning("%s %s: %s unavailable: %s: %s", request.method, request.url.path, dependency,
                type(exc).__name__, exc)
    what = {"redis": "the job queue (Redis)", "storage": "the object store"}[dependency]
    return problem_response(request, 503, "Service unavailable",
                            f"{what} is unavailable; nothing was changed, retry in a few seconds",
                            slug=f"{dependency}-unavailable", headers={"Retry-After": str(RETRY_AFTER_S)})


def _internal(request: Request, exc: BaseException) -> JSONResponse:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return problem_response(request, 500, "Internal server error", type(exc).__name__, slug="internal")


class CatchAll(HttpMiddleware):
    """Answers an unexpected exception with a 500 problem document and does not re-raise it."""

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:  # a streamed body failed midway: nothing sensible can follow on this connection
                log.error("%s failed after the response started", scope.get("path"), exc_info=exc)
                raise
            request = Request(scope)
            response = (unavailable_response(request, exc) if is_dependency_error(exc)
                        else _internal(request, exc))
            await response(scope, receive, send)


def _allowed_methods(app: FastAPI, request: Request, first: str) -> str:
    """Every documented method at this path (Starlette's 405 names only the first matching route's)."""
    methods = {m.strip() for m in first.split(",") if m.strip()}
    route = request.scope.get("route")
    template = getattr(route, "path_format", None)
    item = app.openapi().get("paths", {}).get(template, {}) if template else {}
    methods |= {m.upper() for m in item if m in ("get", "put", "post", "delete", "patch", "head", "options")}
    if "GET" in methods:
        methods.add("HEAD")
    return ", ".join(sorted(methods))


# Documented error responses for the OpenAPI document.
_TEXT = {
    400: "The request body is not valid JSON",
    401: "Missing or unknown API key (`Authorization: Bearer <key>`)",
    403: "The API key's role may not do this",
    404: "No such job, data set or model (or not yours)",
    409: "Not available in the job's current state (or a request with the same Idempotency-Key is still "
         "being processed; a data set or model still in use, or built in; presigned uploads on a store "
         "without them)",
    413: "The request body is larger than the server's limit (CDP_MAX_BODY_BYTES; uploads: "
         "CDP_MAX_UPLOAD_BYTES)",
    415: "The body must be multipart/form-data (an upload) or application/json",
    422: "Invalid request (see `errors`, one entry per bad field)",
    429: "A quota of the caller's team is used up; retry after `Retry-After` seconds",
    503: "A dependency (Redis or storage) is unavailable; retry after `Retry-After` seconds",
}
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying",
                                "schema": {"type": "integer", "minimum": 0}}}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    out: dict[int | str, dict[str, Any]] = {}
    for s in statuses:
        out[s] = {"model": Problem, "description": _TEXT.get(s, "Error"),
                  "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}}
        if s in (429, 503):
            out[s]["headers"] = _RETRY_AFTER
    return out
