"""Every Redis key and client call of the service lives in the Redis layer.

The rule: in core/jobs, api and worker, only the Redis layer touches Redis: ``core/jobs/records.py`` (the job
repository, the front everyone else uses), the modules it composes (``leases.py`` as ``repo.leases``,
``idempotency.py`` as ``repo.idempotency``, ``dependants.py`` as ``repo.dependants``, ``quotas.py``), and
``dependencies.py`` (the client factory and the errors). Elsewhere no module imports ``redis``, reads an
attribute named ``redis`` (``repo.redis``, ``app.state.redis``), calls a method on a variable named ``redis``,
or names a Redis key of :mod:`core.jobs.keys` (``keys.r_*``, ``keys.R_*``). The composition roots (api/app.py,
worker/tasks.py) may build a client with ``dependencies.redis_client`` and hand it to the layer's
constructors. One exception: ``core/jobs/embedded.py`` starts a redis-server for the embedded stack and pings
it until it answers; it holds no keys.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REDIS_LAYER = {"core/jobs/records.py", "core/jobs/leases.py", "core/jobs/idempotency.py",
               "core/jobs/quotas.py", "core/jobs/dependencies.py", "core/jobs/dependants.py"}
SERVER_LAUNCHER = "core/jobs/embedded.py"
LAUNCHER_USES = {"import redis", "redis.Redis"}  # a client that pings the server it started
KEY_PREFIXES = ("redis_", "REDIS_")  # the Redis keys of core.jobs.keys


def redis_uses(source: str) -> list[str]:
    """What in ``source`` touches Redis directly, one line per use (``line: what``)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, f"import {a.name}") for a in node.names
                      if a.name.partition(".")[0] == "redis"]
        elif isinstance(node, ast.ImportFrom):
            if (node.module or "").split(".")[0] == "redis":
                found.append((node.lineno, f"from {node.module} import ..."))
            if node.module == "core.jobs.keys":
                found += [(node.lineno, f"imports key {a.name}") for a in node.names
                          if a.name.startswith(KEY_PREFIXES)]
        elif isinstance(node, ast.Attribute):
            owner = node.value.id if isinstance(node.value, ast.Name) else None
            if node.attr == "redis":
                found.append((node.lineno, ".redis"))
            elif owner == "redis":
                found.append((node.lineno, f"redis.{node.attr}"))
            elif owner == "keys" and node.attr.startswith(KEY_PREFIXES):
                found.append((node.lineno, f"keys.{node.attr}"))
    return [f"{line}: {what}" for line, what in sorted(found)]


def service_modules() -> list[str]:
    paths = [p for top in ("core/jobs", "api", "worker") for p in (ROOT / top).rglob("*.py")]
    return sorted(p.relative_to(ROOT).as_posix() for p in paths)


def test_the_scan_sees_each_kind_of_direct_use() -> None:
    source = ("import redis\nfrom redis.lock import Lock\nfrom core.jobs.keys import redis_progress\n"
              "repo.redis.hset('k', 'f', 1)\nredis.ping()\nkeys.redis_shards('j')\n"
              "keys.REDIS_RECONCILE_LOCK\n")
    assert [use.split(": ", 1)[0] for use in redis_uses(source)] == ["1", "2", "3", "4", "5", "6", "7"]
    assert redis_uses("repo.note_shard_done(job_id, 3)\nsettings.redis_url\nkeys.shard_key(j, 0)\n") == []


@pytest.mark.parametrize("path", [p for p in service_modules() if p not in REDIS_LAYER])
def test_only_the_redis_layer_touches_redis(path: str) -> None:
    uses = redis_uses((ROOT / path).read_text())
    if path == SERVER_LAUNCHER:
        uses = [u for u in uses if u.split(": ", 1)[1] not in LAUNCHER_USES]
    assert not uses, f"{path} touches Redis directly (go through JobRepository): {uses}"


def test_the_layer_is_where_the_rule_says() -> None:
    assert REDIS_LAYER | {SERVER_LAUNCHER} <= set(service_modules())
