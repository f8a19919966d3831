"""Who is calling: API keys (``CDP_API_KEYS_FILE``), teams and the admin role.

The key is checked by :class:`Gate`, a plain ASGI middleware, before any route runs, so a request without a
valid key is a 401 before its body is read (FastAPI parses a body before it solves a route's dependencies,
so a dependency alone would answer malformed JSON with 400/422 first). The route dependency
:func:`get_caller` is declared with ``fastapi.security.HTTPBearer``, so the OpenAPI document carries an HTTP
bearer security scheme: generated clients use ``AuthenticatedClient`` and Swagger UI offers Authorize.

Without keys (no keys file and no legacy ``CDP_API_TOKENS``) auth is off: every caller is the single local
team ``anonymous`` (the embedded default, ``make demo``). With keys, a member key sees only its team's jobs;
an admin key sees every team's jobs and may read ``/metrics``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.asgi import HttpMiddleware
from api.problems import problem_response
from api.session import Sessions
from core.jobs.apikeys import KeyRing

ANONYMOUS = "anonymous"
# Paths anyone may read: the probes, the API's own documentation and the static files of docs and console.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
PUBLIC_PREFIXES = ("/static/",)
# The console authenticates its own requests (a signed session cookie, api/session.py): without one, its
# pages send the browser to its sign-in page instead of a 401.
CONSOLE_PATHS = ("/ui",)
ADMIN_PATHS = frozenset({"/metrics"})


@dataclass(frozen=True)
class Caller:
    team: str
    role: str = "member"

    @property
    def admin(self) -> bool:
        return self.role == "admin"

    @property
    def scope(self) -> str | None:
        """The owner whose jobs this caller may see; None (every owner's) for an admin."""
        return None if self.admin else self.team


LOCAL = Caller(ANONYMOUS)


class Gate(HttpMiddleware):
    """Authenticates every non-public request from its ``Authorization: Bearer <key>`` header and puts the
    :class:`Caller` into the request's state; answers 401 (no or unknown key) or 403 (``/metrics`` for a
    non-admin) itself, before the body is read."""

    def __init__(self, app: ASGIApp, *, keys: KeyRing, sessions: Sessions | None = None) -> None:
        super().__init__(app)
        self.keys = keys
        self.sessions = sessions

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            await self.app(scope, receive, send)
            return
        caller = LOCAL
        if self.keys.enabled:
            token = _bearer(scope)
            found = self.keys.lookup(token)
            session = self.sessions.from_scope(scope) if self.sessions and not token else None
            if found is None and session is not None:  # a console session: GET and HEAD only
                found = session
            if found is None and (path == "/" or path.startswith(CONSOLE_PATHS)):
                await self.app(scope, receive, send)  # no caller in the state: the console asks to sign in
                return
            if found is None:
                response = problem_response(
                    Request(scope), 401, "Unauthorized", "a valid 'Authorization: Bearer <API key>' header "
                    "is required", slug="unauthorized", headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
            caller = Caller(found.team, found.role)
            if scope["path"] in ADMIN_PATHS and not caller.admin:
                response = problem_response(Request(scope), 403, "Forbidden",
                                            "this resource needs an admin key", slug="forbidden")
                await response(scope, receive, send)
                return
        scope.setdefault("state", {})["cdp_caller"] = caller
        await self.app(scope, receive, send)


def _bearer(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return ""


class BodyTooLarge(HTTPException):
    """A body that outgrew :class:`BodyLimit`'s limit while it was read: answered as a 413 problem."""

    def __init__(self, detail: str = "request body too large") -> None:
        super().__init__(413, detail)


class BodyLimit(HttpMiddleware):
    """413 for a request body over ``max_bytes`` (``max_upload_bytes`` on the upload routes): at once from
    Content-Length, else as soon as the bytes read exceed it (FastAPI re-raises an HTTPException met while
    reading the body, so the problem handler answers).

    Kept, though FastAPI and Starlette now have a ``max_body_size``, for its place in the stack: it sits
    inside :class:`Gate`, so a request without a valid key is a 401 before any of its body is read, and
    only then is an oversized one a 413. The app-wide ``max_body_size`` sits outside every user middleware
    and, for a Content-Length over the limit, replaces whatever response starts (the 401 included) with a
    plain-text 413; a route's own ``max_body_size`` refuses a body its route never reads only after the
    route has run (again replacing its response with a plain-text 413)."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, upload_paths: frozenset[str] = frozenset(),
                 max_upload_bytes: int = 0) -> None:
        super().__init__(app)
        self.max_bytes = max_bytes
        self.upload_paths, self.max_upload_bytes = upload_paths, max_upload_bytes

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        upload = scope["path"] in self.upload_paths and scope.get("method") == "POST"
        limit = self.max_upload_bytes if upload else self.max_bytes
        what = (f"the upload exceeds CDP_MAX_UPLOAD_BYTES = {limit} bytes" if upload
                else f"the request body exceeds {limit} bytes")
        for name, value in scope.get("headers", []):
            if name == b"content-length" and (not value.isdigit() or int(value) > limit):
                response = problem_response(Request(scope), 413, "Request body too large", what,
                                            slug="request-body-too-large")
                await response(scope, receive, send)
                return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(what)
            return message

        await self.app(scope, counting_receive, send)


bearer = HTTPBearer(auto_error=False, description="An API key from `cdp keys create` (not needed when the "
                    "server has no keys)")


async def get_caller(request: Request,
                     _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Caller:
    """The caller :class:`Gate` authenticated (the dependency documents the bearer scheme)."""
    return request.scope.get("state", {}).get("cdp_caller", LOCAL)


CallerDep = Annotated[Caller, Depends(get_caller)]
