"""Reading a server-sent event stream in tests (``GET /jobs/{id}/events``, ``GET /pipelines/{id}/events``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any


def follow_events(client: Any, path: str, **params: Any) -> Iterator[tuple[str, dict]]:
    """(event, data) of each event of the stream at ``path`` as it arrives, until the server ends it."""
    with client.stream("GET", path, params=params) as stream:
        name = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: ") and name is not None:
                yield name, json.loads(line.removeprefix("data: "))


def read_events(client: Any, path: str, **params: Any) -> list[tuple[str, dict]]:
    """Every (event, data) of the stream at ``path``, read to its end."""
    return list(follow_events(client, path, **params))
