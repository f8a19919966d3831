"""The deployment files: docker-compose.yml wiring, .env.example, and the Dockerfiles.

Docker is not needed: the compose file is parsed with PyYAML and its ``${VAR}`` references are resolved here
(the subset compose uses: ``$$``, ``${VAR}``, ``${VAR:-default}``, ``${VAR:?message}``).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from core.settings import Settings
from core.storage import store_from_settings
from core.storage.minio_store import MinioStore

ROOT = Path(__file__).resolve().parents[1]
APP_SERVICES = ("api", "worker", "scheduler")
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:-|:\?)([^}]*))?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def env_example() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep, f".env.example: not NAME=value: {line!r}"
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[name] = value
    return values


def interpolate(text: str, env: dict[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.groups()
        if env.get(name):
            return env[name]
        if op == ":-":
            return arg
        raise KeyError(f"${{{name}}} is required ({arg or 'no message'}) and not set")

    return _VAR.sub(one, text)


def referenced_variables(text: str) -> dict[str, str | None]:
    """Variables the compose file reads from .env: name -> operator (None, ':-' or ':?')."""
    return {m.group(1): m.group(2) for m in _VAR.finditer(text) if m.group(0) != "$$"}


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    assert isinstance(env, dict), "environment must be a mapping"
    return {str(k): str(v) for k, v in env.items()}


# -- services and wiring -------------------------------------------------------------------------------


def test_services(services: dict[str, Any]) -> None:
    assert set(services) == {"api", "worker", "worker-gpu1", "scheduler", "redis", "minio", "createbuckets",
                             "flower"}


def test_one_scheduler_runs_beat_on_the_control_queue_and_workers_serve_the_work_queue(
        services: dict[str, Any]) -> None:
    from core.jobs.queue import CONTROL_QUEUE, WORK_QUEUES

    scheduler = services["scheduler"]["command"]
    assert scheduler[:4] == ["celery", "--app", "worker.app", "worker"] and "--beat" in scheduler
    assert scheduler[scheduler.index("--queues") + 1] == CONTROL_QUEUE
    assert "deploy" not in services["scheduler"]  # no GPU, and no replicas (beat must run once)
    for name in ("worker", "worker-gpu1"):  # the queues come from CDP_WORKER_QUEUES (default: every kind)
        worker = services[name]["command"]
        assert "--queues" not in worker and "--beat" not in worker
        queues = env_of(services[name])["CDP_WORKER_QUEUES"].split(":-", 1)[1].rstrip("}")
        assert queues.split(",") == list(WORK_QUEUES)


@pytest.mark.parametrize("name", ["worker", "worker-gpu1"])
def test_each_worker_reserves_one_nvidia_gpu_and_runs_one_process(services: dict[str, Any],
                                                                  name: str) -> None:
    worker = services[name]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1
    (device,) = devices
    assert device["driver"] == "nvidia"
    assert "gpu" in device["capabilities"]
    assert len(device.get("device_ids", [])) == 1 or device.get("count") == 1
    command = worker["command"]
    assert command[:4] == ["celery", "--app", "worker.app", "worker"]
    assert command[command.index("--concurrency") + 1] == "1"
    assert env_of(worker)["CDP_DEVICE"] == "cuda:0"  # the one GPU the container sees


def test_the_two_gpu_workers_reserve_different_gpus(services: dict[str, Any]) -> None:
    ids = [services[name]["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"][0]
           for name in ("worker", "worker-gpu1")]
    assert ids == ["${WORKER_GPU:-0}", "${WORKER_GPU1:-1}"]


def test_api_and_worker_start_the_real_entry_points(services: dict[str, Any]) -> None:
    import importlib

    api_command = services["api"]["command"]
    assert api_command[:3] == ["uvicorn", "--factory", "api.app:create_app"]
    module, _, factory = api_command[2].partition(":")
    assert callable(getattr(importlib.import_module(module), factory))
    assert importlib.util.find_spec(services["worker"]["command"][2]) is not None


def test_healthchecks(services: dict[str, Any]) -> None:
    assert services["minio"]["healthcheck"]["test"] == ["CMD", "mc", "ready", "local"]
    assert "ping" in services["redis"]["healthcheck"]["test"]
    assert "/readyz" in " ".join(services["api"]["healthcheck"]["test"])


def test_startup_order(services: dict[str, Any]) -> None:
    for name in APP_SERVICES:
        deps = services[name]["depends_on"]
        assert deps["createbuckets"]["condition"] == "service_completed_successfully", name
        assert deps["minio"]["condition"] == "service_healthy", name
        assert deps["redis"]["condition"] == "service_healthy", name
    assert services["createbuckets"]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert services["createbuckets"]["restart"] == "no"


def test_bucket_creation_step(services: dict[str, Any]) -> None:
    script = " ".join(services["createbuckets"]["command"])
    assert 'mc mb --ignore-existing "local/$$CDP_MINIO_BUCKET"' in script
    assert "mc alias set local http://minio:9000" in script
    assert services["createbuckets"]["entrypoint"][:2] == ["/bin/sh", "-ceu"]  # stops at the first failure


def test_redis_and_minio_persist_to_volumes(compose: dict[str, Any], services: dict[str, Any]) -> None:
    redis_cmd = services["redis"]["command"]
    assert redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"
    for name, mount in (("redis", "/data"), ("minio", "/data")):
        volumes = [v.split(":") for v in services[name]["volumes"]]
        named = [src for src, dst, *_ in volumes if dst == mount]
        assert named and named[0] in compose["volumes"], f"{name} keeps {mount} on a named volume"
    assert services["minio"]["command"][:2] == ["server", "/data"]
    assert "--console-address" in services["minio"]["command"]


def test_environment_names_are_settings_fields(compose: dict[str, Any]) -> None:
    fields = set(Settings.model_fields)
    names = set()
    for service in compose["services"].values():
        names |= {k for k in env_of(service) if k.startswith("CDP_")}
    names |= {k for k in env_example() if k.startswith("CDP_")}
    unknown = sorted(n for n in names if n.removeprefix("CDP_").lower() not in fields)
    assert not unknown, f"CDP_* variables that are no Settings field: {unknown}"
    for name in APP_SERVICES:
        env = env_of(compose["services"][name])
        for required in ("CDP_REDIS_URL", "CDP_STORE_BACKEND", "CDP_MINIO_ENDPOINT", "CDP_MINIO_ACCESS_KEY",
                         "CDP_MINIO_SECRET_KEY", "CDP_MINIO_BUCKET", "CDP_MINIO_PUBLIC_ENDPOINT"):
            assert required in env, f"{name} lacks {required}"


def test_env_example_covers_every_required_variable() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    example = env_example()
    required = sorted(name for name, op in referenced_variables(text).items() if op != ":-")
    assert required, "the compose file takes its secrets from .env"
    missing = [name for name in required if name not in example]
    assert not missing, f".env.example lacks {missing}"
    for name, value in example.items():
        if "SECRET" in name or "PASSWORD" in name or name == "CDP_API_TOKENS":
            assert "change-me" in value, f"{name} in .env.example must be an obvious placeholder"


def resolved_app_env(service: str, env: dict[str, str]) -> dict[str, str]:
    # Like compose: parse the YAML first, then interpolate the string values.
    raw = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return {k: interpolate(v, env) for k, v in env_of(raw["services"][service]).items()}


def test_compose_refuses_the_placeholder_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in resolved_app_env("worker", env_example()).items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError, match="well-known credentials"):
        Settings()


def test_compose_environment_builds_working_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    env = env_example() | {
        "MINIO_ROOT_PASSWORD": "r00t-" + "x" * 20,
        "CDP_MINIO_SECRET_KEY": "svc-" + "y" * 20,
    }
    for service in APP_SERVICES:
        for key, value in resolved_app_env(service, env).items():
            monkeypatch.setenv(key, value)
        settings = Settings()
        assert settings.redis_url == "redis://redis:6379/0"
        assert settings.api_keys_file == Path("/srv/cdp/keys/api-keys.json") and settings.api_tokens == {}
        store = store_from_settings(settings)
        assert isinstance(store, MinioStore)
        assert (store.endpoint, store.bucket, store.secure) == ("minio:9000", "cdp", False)
        assert store.public_endpoint == "localhost:9000"


def test_missing_env_file_fails_loudly() -> None:
    with pytest.raises(KeyError, match="CDP_MINIO_ACCESS_KEY|MINIO_ROOT_USER"):
        interpolate((ROOT / "docker-compose.yml").read_text(), {})


# -- images --------------------------------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_gpu_image_is_a_cuda_pytorch_base() -> None:
    instructions = dockerfile_instructions(ROOT / "Dockerfile.gpu")
    args = dict(rest.split("=", 1) for kw, rest in instructions if kw == "ARG" and "=" in rest)
    (base,) = [rest for kw, rest in instructions if kw == "FROM"]
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
    assert re.fullmatch(r"pytorch/pytorch:\d+\.\d+\.\d+-cuda\d+\.\d+-cudnn\d+-runtime", base), base


def pip_installs(path: Path) -> list[list[str]]:
    """The argument lists of every `pip install` in the RUN instructions."""
    installs = []
    for keyword, rest in dockerfile_instructions(path):
        if keyword != "RUN":
            continue
        lexer = shlex.shlex(rest, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        command: list[str] = []
        for token in [*lexer, "&&"]:
            if token in ("&&", ";", "||", "|"):
                if "pip" in command and "install" in command:
                    installs.append(command[command.index("install") + 1 :])
                command = []
            else:
                command.append(token)
    return installs


def test_gpu_image_does_not_install_a_second_torch() -> None:
    installs = pip_installs(ROOT / "Dockerfile.gpu")
    assert installs, "the image installs the project"
    for args in installs:
        packages = [a for a in args if not a.startswith("-")]
        assert not [p for p in packages if re.match(r"torch\b", p)], f"pip installs torch: {args}"
        # the project is installed with the base image's torch pinned as a constraint
        assert "--constraint" in args or "-c" in args, f"pip install without the torch constraint: {args}"


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_dependencies_are_a_layer_below_the_source(name: str) -> None:
    # The dependency install sees only pyproject.toml, so editing the source does not invalidate it; the
    # project itself is installed after the source is copied, without dependencies.
    instructions = dockerfile_instructions(ROOT / name)
    installs = [i for i, (kw, rest) in enumerate(instructions) if kw == "RUN" and "pip install" in rest]
    source = [i for i, (kw, rest) in enumerate(instructions)
              if kw == "COPY" and rest.split()[0] in ("core", "api", "worker")]  # fmt: skip
    assert installs and source, f"{name}: no pip install or no source copied"
    dependencies = [i for i in installs if i < min(source)]
    assert dependencies, f"{name}: no dependency install before the source is copied"
    copied_first = [rest for kw, rest in instructions[: dependencies[-1]] if kw == "COPY"]
    assert copied_first == ["pyproject.toml ./"], f"{name}: the dependency layer also sees {copied_first}"
    project = [instructions[i][1] for i in installs if i > max(source)]
    assert project and all("--no-deps" in rest for rest in project), f"{name}: {project}"


def test_api_reads_hashed_keys_and_worker_exports_metrics_and_flower_is_optional(
    services: dict[str, Any]
) -> None:
    assert any(v.endswith(":/srv/cdp/keys:ro") for v in services["api"]["volumes"])
    worker = env_of(services["worker"])
    assert worker["CDP_WORKER_METRICS_PORT"] == "9100" and worker["PROMETHEUS_MULTIPROC_DIR"] in (
        services["worker"]["tmpfs"])
    assert services["flower"]["profiles"] == ["flower"]
    assert all(not p.startswith("5555") for p in services["flower"]["ports"])  # loopback only
