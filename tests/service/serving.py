"""A real uvicorn server on loopback for the tests that need HTTP over a socket (keep-alive, generated
clients, schemathesis)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from core.jobs.embedded import free_port


@contextlib.contextmanager
def served(app: Any, *, start_timeout_s: float = 10.0) -> Iterator[str]:
    """Serve ``app`` on a free loopback port in a daemon thread; yields its base URL, stops it afterwards."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
