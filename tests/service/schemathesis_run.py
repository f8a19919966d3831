"""Schemathesis against a fresh embedded stack with API keys: ``make schemathesis`` (or
``.venv/bin/python -m tests.service.schemathesis_run --examples 20 --seed 7``).

It starts what ``cdp up`` starts (a private Redis, a worker, the control worker with beat, the API under
uvicorn) in a temporary directory, with a keys file holding one member key of team ``team-a``, no models
and no finished jobs (the embedded default: the built-in data sets that ship in packages), then runs
``schemathesis run --checks all`` over every phase (examples, coverage, fuzzing, stateful) with that key,
prints schemathesis' summary and exits with its status. ``/jobs/{id}/events`` is left out: it streams until
the job finishes (tests/service/test_jobs_execute.py and the generated-client tests read it).

tests/service/test_api_schemathesis.py runs the same command with a few examples in the suite.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
PHASES = "examples,coverage,fuzzing,stateful"


def schemathesis_command(url: str, key: str, *, examples: int, seed: int, phases: str = PHASES,
                         workers: int = 1) -> list[str]:
    cli = Path(sys.executable).with_name("schemathesis")
    return [str(cli), "--no-color", "--config-file", str(HERE / "schemathesis.toml"), "run",
            f"{url}/openapi.json", "--checks", "all", "--phases", phases,
            "--max-examples", str(examples), "--seed", str(seed), "--workers", str(workers),
            "--header", f"Authorization: Bearer {key}", "--request-timeout", "20",
            "--exclude-path-regex", "/events$", "--suppress-health-check", "all"]


def schemathesis_env() -> dict[str, str]:
    """The environment schemathesis runs in: the project's hooks loaded."""
    root = str(HERE.parent.parent)
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "SCHEMATHESIS_HOOKS": "tests.service.schemathesis_hooks"}


def main(argv: list[str] | None = None) -> int:
    from core.cli.up import EmbeddedStack
    from core.jobs.apikeys import create_key
    from core.jobs.embedded import free_port

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=20, help="--max-examples per operation (20)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--phases", default=PHASES)
    parser.add_argument("--workers", type=int, default=1, help="schemathesis workers (1)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cdp-schemathesis-") as tmp:
        keys = Path(tmp) / "keys.json"
        _, key = create_key(keys, team="team-a")
        # long polls cut to 2 s: a ?wait=3599 then answers well inside schemathesis' 20 s request timeout (a
        # client that asks longer than it waits is not a server error; the bound is tested elsewhere)
        env = {"CDP_API_KEYS_FILE": str(keys), "CDP_MAX_WAIT_SECONDS": "2"}
        stack = EmbeddedStack(var=Path(tmp) / "var", port=free_port(), env=env, persist_redis=False,
                              redis_url=None)
        os.environ.pop("CDP_REDIS_URL", None)  # a fresh private Redis, never a shared one
        with stack:
            print(f"fresh stack on {stack.base_url}; running schemathesis", file=sys.stderr, flush=True)
            command = schemathesis_command(stack.base_url, key, examples=args.examples, seed=args.seed,
                                           phases=args.phases, workers=args.workers)
            done = subprocess.run(command, env=schemathesis_env(), cwd=tmp, check=False)
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
