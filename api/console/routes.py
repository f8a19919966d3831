"""The console's pages (``/ui``): sign in, the team's jobs, one job, an experiment's report inline.

Every page reads through the same :class:`core.jobs.records.JobRepository` the JSON API uses, with the
caller's scope, so a team's console shows only its own jobs (another team's job is a 404 page, as in the
API). Forms that change something (cancel, sign out) carry the session's CSRF token.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, FastAPI, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from api.auth import ANONYMOUS, Caller
from api.console import views
from api.session import COOKIE, MAX_AGE_S, Session, Sessions, cookie_of
from core.jobs import keys
from core.jobs.errors import JobNotFound
from core.specs import JOB_ID_PATTERN, JobRecord
from core.storage import ObjectNotFound

HERE = Path(__file__).parent
STATIC_URL = "/static/console"
# The console's navigation: (label, path). Pages added later (datasets, models) append here.
NAV: list[tuple[str, str]] = [("Jobs", "/ui")]
KINDS = ("generate", "train", "evaluate", "experiment")
STATUSES = ("queued", "running", "succeeded", "failed", "canceled")
PAGE_SIZE = 25
# The pages run only this app's own script and style; nothing may frame them but this origin.
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "connect-src 'self'; frame-src 'self'; form-action 'self'; base-uri 'none'; "
            "frame-ancestors 'self'")
# report.html is a self-contained page: inline styles and data: images, no script, no request anywhere.
REPORT_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; "
              "form-action 'none'; frame-ancestors 'self'; sandbox")

templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters["number"] = views.number
templates.env.filters["size"] = views.size
router = APIRouter(include_in_schema=False)


def install(app: FastAPI, sessions: Sessions) -> None:
    app.state.sessions = sessions
    app.mount(STATIC_URL, StaticFiles(directory=HERE / "static"), name="console-static")
    app.include_router(router)


def _sessions(request: Request) -> Sessions:
    return request.app.state.sessions


def _session(request: Request) -> Session | None:
    """The signed-in session (any method; the local team's when the server has no keys), or None."""
    return _sessions(request).load(cookie_of(request.scope))


def _caller(request: Request) -> Caller | None:
    caller = request.scope.get("state", {}).get("cdp_caller")
    return caller if isinstance(caller, Caller) else None


def _page(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    caller = _caller(request)
    sessions = _sessions(request)
    session = sessions.load(cookie_of(request.scope))
    new_cookie = None
    if session is None and not sessions.enabled:  # the local team: a session only for its CSRF token
        new_cookie = sessions.anonymous()
        session = sessions.load(new_cookie)
    response = templates.TemplateResponse(request, template, status_code=status_code, context={
        "nav": NAV, "caller": caller, "auth": sessions.enabled, "static": STATIC_URL,
        "csrf": session.csrf if session else "", **context})
    if new_cookie is not None:
        _set_cookie(request, response, new_cookie)
    response.headers["Content-Security-Policy"] = PAGE_CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"
    return response


def _set_cookie(request: Request, response: Response, value: str) -> None:
    response.set_cookie(COOKIE, value, max_age=MAX_AGE_S, path="/", httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")


def _to_login(request: Request) -> RedirectResponse:
    return RedirectResponse("/ui/login", status_code=303)


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("/ui", status_code=307)


@router.get("/ui/login")
async def login_page(request: Request) -> Response:
    if not _sessions(request).enabled:
        return RedirectResponse("/ui", status_code=303)
    return _page(request, "login.html", title="Sign in")


@router.post("/ui/login")
async def login(request: Request, key: Annotated[str, Form(max_length=200)] = "") -> Response:
    signed = _sessions(request).sign_in(key)
    if signed is None:
        return _page(request, "login.html", status_code=401, title="Sign in",
                     error="That API key is not valid (or was revoked): use a key made by cdp keys create.")
    response = RedirectResponse("/ui", status_code=303)
    _set_cookie(request, response, signed[0])
    return response


@router.post("/ui/logout")
async def logout(request: Request, csrf: Annotated[str, Form(max_length=100)] = "") -> Response:
    session = _session(request)
    if session is not None and not Sessions.check_csrf(session, csrf):  # no session (expired): just go
        return _page(request, "error.html", status_code=403, title="Forbidden",
                     message="The form was not sent from this console (missing or wrong CSRF token).")
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response


@router.get("/ui")
def jobs_page(request: Request, kind: str = "", status: str = "", parent: str = "",
              page_token: Annotated[str, Query(max_length=64)] = "") -> Response:
    caller = _caller(request)
    if caller is None:
        return _to_login(request)
    errors = []
    if kind and kind not in KINDS:
        errors.append(("kind", f"kind must be one of {', '.join(KINDS)}"))
    if status and status not in STATUSES:
        errors.append(("status", f"status must be one of {', '.join(STATUSES)}"))
    for name, value in (("parent", parent), ("page_token", page_token)):
        if value and not re.fullmatch(JOB_ID_PATTERN, value):
            errors.append((name, f"{name} must be a job id (24 hex digits)"))
    items: list[JobRecord] = []
    token = None
    if not errors:
        repo = request.app.state.service.repo
        items, token = repo.list(owner=caller.scope, kind=kind or None, status=status or None,
                                 page_size=PAGE_SIZE, page_token=page_token or None, parent=parent or None)
    filters = {"kind": kind, "status": status, "parent": parent}
    return _page(request, "jobs.html", status_code=422 if errors else 200, title="Jobs", jobs=items,
                 next_token=token, filters=filters, kinds=KINDS, statuses=STATUSES, errors=errors,
                 paged=bool(page_token))


def _job(request: Request, caller: Caller, job_id: str) -> JobRecord | None:
    if not re.fullmatch(JOB_ID_PATTERN, job_id):
        return None
    try:
        return request.app.state.service.repo.get(job_id, owner=caller.scope)
    except JobNotFound:
        return None


def _not_found(request: Request, job_id: str) -> HTMLResponse:
    return _page(request, "error.html", status_code=404, title="Not found",
                 message=f"No job {job_id[:32]} in your team's jobs.")


def _artifacts(store: Any, job_id: str) -> tuple[list[dict[str, Any]], bool]:
    prefix = keys.job_prefix(job_id)
    try:
        manifest = store.get_json(keys.manifest_key(job_id))
        listed = [{"name": a["name"], "size": a["size"], "sha256": a["sha256"]}
                  for a in manifest["artifacts"]]
        size = store.stat(keys.manifest_key(job_id)).size
        return [*listed, {"name": "manifest.json", "size": size, "sha256": None}], True
    except ObjectNotFound:
        return [{"name": i.key[len(prefix):], "size": i.size, "sha256": i.sha256} for i in store.list(prefix)
                if i.key != keys.record_key(job_id)], False


@router.get("/ui/jobs/{job_id}")
def job_page(request: Request, job_id: str) -> Response:
    caller = _caller(request)
    if caller is None:
        return _to_login(request)
    job = _job(request, caller, job_id)
    if job is None:
        return _not_found(request, job_id)
    store = request.app.state.store
    try:
        metrics = store.get_json(keys.metrics_key(job.id))
    except ObjectNotFound:
        metrics = None
    artifacts, complete = _artifacts(store, job.id)
    names = [a["name"] for a in artifacts]
    children: list[JobRecord] = []
    if job.kind == "experiment":
        children, _ = request.app.state.service.repo.list(owner=caller.scope, parent=job.id, page_size=200)
    return _page(request, "job.html", title=f"{job.kind} job {job.id}", job=job,
                 spec=views.pretty_json(job.input), metrics=metrics,
                 metric_rows=views.metric_rows(metrics) if metrics else [],
                 history=views.history_table(metrics) if metrics else ([], []),
                 curve=views.sparkline(metrics.get("steps")) if metrics else None,
                 warnings=views.warnings_of(metrics) if metrics else [],
                 artifacts=artifacts, complete=complete, images=views.images(names),
                 has_report="report.html" in names, children=children)


@router.post("/ui/jobs/{job_id}/cancel")
async def cancel(request: Request, job_id: str, csrf: Annotated[str, Form(max_length=100)] = "") -> Response:
    session = _session(request)
    if session is None and _sessions(request).enabled:
        return _to_login(request)
    if not Sessions.check_csrf(session, csrf):
        return _page(request, "error.html", status_code=403, title="Forbidden",
                     message="The form was not sent from this console (missing or wrong CSRF token).")
    assert session is not None
    caller = Caller(session.team, session.role)
    job = await anyio.to_thread.run_sync(lambda: _job(request, caller, job_id))
    if job is None:
        return _not_found(request, job_id)
    await anyio.to_thread.run_sync(lambda: request.app.state.service.cancel(job.id, owner=caller.scope))
    return RedirectResponse(f"/ui/jobs/{job.id}", status_code=303)


@router.get("/ui/jobs/{job_id}/report")
def report(request: Request, job_id: str) -> Response:
    """The experiment's report.html, inline (Content-Type text/html) under a strict CSP."""
    caller = _caller(request)
    if caller is None:
        return _to_login(request)
    job = _job(request, caller, job_id)
    if job is None:
        return _not_found(request, job_id)
    try:
        body = request.app.state.store.get_bytes(keys.job_prefix(job.id) + "report.html")
    except ObjectNotFound:
        return _page(request, "error.html", status_code=404, title="No report",
                     message=f"Job {job.id} has no report (yet).")
    return HTMLResponse(body, headers={"Content-Security-Policy": REPORT_CSP, "Cache-Control": "no-store",
                                       "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"})


__all__ = ["ANONYMOUS", "NAV", "install"]
