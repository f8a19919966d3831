"""RFC 9457 problem details: every error the API returns is ``application/problem+json``.

Body: ``type``, ``title``, ``status``, ``detail``, ``instance``; validation errors add ``errors``, one entry
per bad field with its path (``body.count``, ``query.page_size``, ...).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_JSON = "application/problem+json"


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
    return problem_response(request, 422, "Validation error", detail or summary, slug="validation-error",
                            errors=errors)


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [FieldError(field=_field_path(e.get("loc", ())), message=str(e.get("msg", "")),
                             type=str(e.get("type", ""))) for e in exc.errors()]
        return validation_problem(request, errors)

    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(request, exc.status, exc.title, exc.detail, slug=exc.slug, errors=exc.errors,
                                headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        titles = {404: "Not found", 405: "Method not allowed", 401: "Unauthorized"}
        title = titles.get(exc.status_code, "Error")
        return problem_response(request, exc.status_code, title, str(exc.detail or ""),
                                slug=title.lower().replace(" ", "-"), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return problem_response(request, 500, "Internal server error", type(exc).__name__, slug="internal")


# Documented error responses for the OpenAPI document.
def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    text = {401: "Missing or unknown bearer token", 404: "No such job (or not yours)",
            409: "Not available in the job's current state", 422: "Invalid request (see `errors`)",
            503: "A dependency (Redis or storage) is unavailable"}
    return {s: {"model": Problem, "description": text.get(s, "Error"),
                "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}}
            for s in statuses}
