"""Structured logs of the API and the workers: one JSON object per line (``CDP_LOG_FORMAT=json``).

Each line has ``ts``, ``level``, ``logger``, ``message`` and, where known, the fields bound with
:func:`bind` for the code running now (``request_id``, ``job_id``, ``unit``, ``owner``, ``attempt``,
``task_id``): the worker binds them around each task, the API the request id around each request
(api/access.py) and the job around each submission. uvicorn's access lines use the same format, with
``client``, ``method``, ``path``, ``http_version`` and ``status``. A context variable carries them, so they
follow the code into threads started with ``contextvars.copy_context`` (anyio's ``to_thread`` does that).

The formatter is the standard library's ``logging.Formatter`` with ``json.dumps``; a library (python-json-
logger, structlog) would add a dependency for these few lines.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

CONTEXT_FIELDS = ("request_id", "job_id", "unit", "owner", "attempt", "task_id")
# uvicorn's access line: logger "uvicorn.access", args (client, method, path, http version, status)
ACCESS_FIELDS = ("client", "method", "path", "http_version", "status")
_context: ContextVar[dict[str, Any] | None] = ContextVar("cdp_log_context", default=None)
_HANDLER_NAME = "cdp-json"


def current() -> dict[str, Any]:
    return dict(_context.get() or {})


@contextmanager
def bind(**fields: Any) -> Iterator[None]:
    """Add ``fields`` to every log line written inside the block (None values are left out)."""
    token = _context.set({**current(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    """Copies the bound fields onto each record (so a text format can show them too)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in current().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is None:
                value = current().get(name)
            if value is not None:
                line[name] = value
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            line.update(zip(ACCESS_FIELDS, record.args, strict=True))
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter()
    return logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


def configure_logging(log_format: str = "json", *, level: int = logging.INFO) -> None:
    """One handler on the root logger writing to stderr in ``log_format`` (idempotent: called again, it
    replaces its own handler's format and adds nothing)."""
    root = logging.getLogger()
    handler = next((h for h in root.handlers if h.get_name() == _HANDLER_NAME), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.set_name(_HANDLER_NAME)
        handler.addFilter(ContextFilter())
        root.addHandler(handler)
        if root.level > level or root.level == logging.NOTSET:
            root.setLevel(level)
    handler.setFormatter(formatter(log_format))


def use_format_on(logger: logging.Logger, log_format: str) -> None:
    """Give every handler of ``logger`` the format (Celery sets up its own handlers)."""
    for handler in logger.handlers:
        handler.setFormatter(formatter(log_format))
        if not any(isinstance(f, ContextFilter) for f in handler.filters):
            handler.addFilter(ContextFilter())
