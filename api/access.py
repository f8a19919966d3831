"""Request ids and uvicorn's access log in the JSON format of the application logs (core/logs.py).

:class:`RequestId` is the outermost middleware: it takes the caller's ``X-Request-Id`` (1 to 128 of
``A-Za-z0-9._:-``) or makes one, answers it in the ``X-Request-Id`` header, and binds it as ``request_id``
to every log line written while the request runs: the application's lines and uvicorn's access line (which
uvicorn writes from inside the response's ``send``, so in the request's context).

:func:`use_log_format_on_uvicorn` gives uvicorn's own handlers (``uvicorn``, ``uvicorn.error``,
``uvicorn.access``, set up by uvicorn before it builds the app) the format of CDP_LOG_FORMAT; in JSON an
access line also carries ``client``, ``method``, ``path``, ``http_version`` and ``status``.
"""

from __future__ import annotations

import logging
import re
import uuid

from starlette.types import Message, Receive, Scope, Send

from api.asgi import HttpMiddleware
from core import logs

HEADER = "x-request-id"
_VALID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


def request_id_of(scope: Scope) -> str:
    """The caller's request id if it is well formed, else a new one (32 hex digits)."""
    for name, value in scope.get("headers", ()):
        if name == HEADER.encode():
            text = value.decode("latin-1")
            if _VALID.fullmatch(text):
                return text
            break
    return uuid.uuid4().hex


class RequestId(HttpMiddleware):
    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = request_id_of(scope)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != HEADER.encode()]
                message["headers"] = [*headers, (HEADER.encode(), request_id.encode())]
            await send(message)

        with logs.bind(request_id=request_id):
            await self.app(scope, receive, send_with_id)


def use_log_format_on_uvicorn(log_format: str) -> None:
    for name in UVICORN_LOGGERS:
        logs.use_format_on(logging.getLogger(name), log_format)
