"""The Kubernetes manifests (deploy/k8s): every overlay renders with ``kubectl kustomize``, validates offline
against the Kubernetes schemas (KEDA's ScaledObject against the schema shipped in deploy/k8s/schemas), and
says what the service needs: a worker Deployment per queue scaled by KEDA on that queue's Redis lists, GPU
requests only in the GPU overlays, every CDP_* setting from the ConfigMap, non-root pods with read-only
root filesystems, and NetworkPolicies under which only the API is reachable from outside."""

from __future__ import annotations

import copy

import pytest

from core.jobs.queue import CONTROL_QUEUE, WORK_QUEUES, queue_keys
from core.settings import Settings
from tests.k8s_render import OVERLAYS, Peer, allowed, by_kind, env_of, kubectl, pod_specs, render, validate

pytestmark = pytest.mark.skipif(kubectl() is None, reason="kubectl (its built-in kustomize) is not installed")

GPU_OVERLAYS = ("gpu", "gpu-s3")
# credentials come from the Secrets cdp-store-credentials and cdp-session; CDP_API_TOKENS is deprecated
FROM_SECRET = {"CDP_MINIO_ACCESS_KEY", "CDP_MINIO_SECRET_KEY", "CDP_SESSION_SECRET"}
NOT_DEPLOYED = {"CDP_API_TOKENS"}


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict]]:
    return request.param, render(request.param)


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {name: render(name) for name in OVERLAYS}


def settings_map(docs: list[dict]) -> dict[str, str]:
    (config,) = [d for d in docs if d["kind"] == "ConfigMap"
                 and d["metadata"]["name"].startswith("cdp-settings")]
    return config["data"]


def test_every_object_validates_against_its_schema(overlay) -> None:
    _, docs = overlay
    assert len(docs) > 20
    for doc in docs:
        validate(doc)


def test_the_validators_reject_a_broken_object(rendered) -> None:
    import jsonschema
    import kubernetes_validate

    deployment = copy.deepcopy(by_kind(rendered["gpu"], "Deployment")["cdp-api"])
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"] = {"httpGet": {"path": "/readyz"}}
    with pytest.raises(kubernetes_validate.ValidationError):  # httpGet needs a port
        validate(deployment)
    scaled = copy.deepcopy(by_kind(rendered["gpu"], "ScaledObject")["cdp-worker-generate"])
    scaled["spec"]["triggers"][0]["metadata"]["listname"] = "cdp.generate"  # a typo of listName
    with pytest.raises(jsonschema.ValidationError):
        validate(scaled)


def test_every_setting_comes_from_the_configmap_and_builds_valid_settings(overlay) -> None:
    _, docs = overlay
    data = settings_map(docs)
    every = {f"CDP_{name.upper()}" for name in Settings.model_fields}
    missing = every - FROM_SECRET - NOT_DEPLOYED - set(data)
    assert not missing, f"add {sorted(missing)} to deploy/k8s/base/cdp.env"
    assert not FROM_SECRET & set(data), "credentials belong in the Secret, not the ConfigMap"
    env = {k.removeprefix("CDP_").lower(): v for k, v in data.items() if k.startswith("CDP_")}
    settings = Settings(**env, minio_access_key="svc", minio_secret_key="a-real-secret")
    assert settings.store_backend == "minio" and settings.api_keys_file is not None
    for name, pod in pod_specs(docs).items():
        if "cdp-" in name and "minio" not in name and "redis" not in name:
            container = pod["spec"]["containers"][0]
            refs = {r.get("configMapRef", r.get("secretRef", {})).get("name") for r in container["envFrom"]}
            assert {"cdp-store-credentials"} <= refs and any(r.startswith("cdp-settings") for r in refs), name


def test_pods_run_as_non_root_with_read_only_roots_and_bounded_resources(overlay) -> None:
    _, docs = overlay
    for name, pod in pod_specs(docs).items():
        spec = pod["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec.get("automountServiceAccountToken") is False, name
        for container in spec["containers"]:
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound]), (name, bound)


def test_the_api_probes_autoscales_and_keeps_a_disruption_budget(overlay) -> None:
    _, docs = overlay
    api = by_kind(docs, "Deployment")["cdp-api"]
    container = api["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    hpa = by_kind(docs, "HorizontalPodAutoscaler")["cdp-api"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "cdp-api"
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    pdb = by_kind(docs, "PodDisruptionBudget")["cdp-api"]
    labels = api["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = by_kind(docs, "Service")["cdp-api"]
    assert service["spec"]["selector"].items() <= labels.items()
    # the hashed API keys come from the Secret cdp-api-keys, mounted where CDP_API_KEYS_FILE points
    keys_file = settings_map(docs)["CDP_API_KEYS_FILE"]
    volumes = {v["name"]: v for v in api["spec"]["template"]["spec"]["volumes"]}
    (mount,) = [m for m in container["volumeMounts"] if keys_file.startswith(m["mountPath"] + "/")]
    assert volumes[mount["name"]]["secret"]["secretName"] == "cdp-api-keys" and mount["readOnly"] is True


def test_one_worker_per_queue_scaled_by_keda_on_that_queues_redis_lists(overlay) -> None:
    name, docs = overlay
    deployments, scaled = by_kind(docs, "Deployment"), by_kind(docs, "ScaledObject")
    namespace = docs[0]["metadata"].get("namespace") or docs[0]["metadata"]["name"]
    data = settings_map(docs)
    for queue in WORK_QUEUES:
        short = queue.removeprefix("cdp.")
        worker = deployments[f"cdp-worker-{short}"]
        container = worker["spec"]["template"]["spec"]["containers"][0]
        assert container["command"][container["command"].index("--queues") + 1] == queue
        assert env_of(container)["CDP_WORKER_QUEUES"] == queue
        assert "replicas" not in worker["spec"], "the ScaledObject owns the replica count"
        obj = scaled[f"cdp-worker-{short}"]
        assert obj["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]
        lists = [t["metadata"]["listName"] for t in obj["spec"]["triggers"] if t["type"] == "redis"]
        assert lists == queue_keys(queue)  # every priority list kombu keeps for the queue
        for trigger in obj["spec"]["triggers"]:  # KEDA's operator resolves Redis from its own namespace
            assert trigger["metadata"]["address"] == f"cdp-redis.{namespace}.svc.cluster.local:6379"
        assert data["CDP_REDIS_URL"].startswith("redis://cdp-redis:6379/")
        gpus = container["resources"]["limits"].get("nvidia.com/gpu")
        if name in GPU_OVERLAYS:
            assert gpus == 1 and obj["spec"]["minReplicaCount"] == 0 and obj["spec"]["maxReplicaCount"] > 1
        else:
            assert gpus is None and obj["spec"]["minReplicaCount"] >= 1
        # a pod that is scaled down keeps renewing its unit's lease during the grace period; past it the
        # lease expires and the reconciler hands the unit on: the grace must cover several renewals
        grace = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace >= 2 * float(data["CDP_LEASE_TTL_S"]) + float(data["CDP_LEASE_RENEW_S"])
        assert grace < float(data["CDP_TASK_TIME_LIMIT_S"])
    if name in GPU_OVERLAYS:  # a train job may not ask for more devices than one train pod has
        train = deployments["cdp-worker-train"]["spec"]["template"]["spec"]["containers"][0]
        assert int(data["CDP_MAX_DEVICES"]) <= train["resources"]["limits"]["nvidia.com/gpu"]
        assert data["CDP_DEVICE"].startswith("cuda")
    else:
        assert data["CDP_DEVICE"] == "cpu"


def test_one_beat_scheduler_and_redis_with_its_append_only_file_on_a_volume(overlay) -> None:
    _, docs = overlay
    scheduler = by_kind(docs, "Deployment")["cdp-scheduler"]
    assert scheduler["spec"]["replicas"] == 1 and scheduler["spec"]["strategy"]["type"] == "Recreate"
    command = scheduler["spec"]["template"]["spec"]["containers"][0]["command"]
    assert "--beat" in command and command[command.index("--queues") + 1] == CONTROL_QUEUE
    assert "cdp-scheduler" not in by_kind(docs, "ScaledObject")
    redis = by_kind(docs, "StatefulSet")["cdp-redis"]
    container = redis["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][container["command"].index("--appendonly") + 1] == "yes"
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    assert {"name": claim["metadata"]["name"], "mountPath": "/data"} in container["volumeMounts"]


def test_store_is_minio_inside_or_an_external_endpoint(rendered) -> None:
    for name in ("cpu-dev", "gpu"):
        assert "cdp-minio" in by_kind(rendered[name], "StatefulSet")
        assert settings_map(rendered[name])["CDP_MINIO_ENDPOINT"] == "cdp-minio:9000"
    external = rendered["gpu-s3"]
    assert "cdp-minio" not in by_kind(external, "StatefulSet")
    data = settings_map(external)
    assert data["CDP_MINIO_ENDPOINT"].startswith("https://") and data["CDP_MINIO_SECURE"] == "true"


API = Peer({"app.kubernetes.io/component": "api"})
WORKER = Peer({"app.kubernetes.io/component": "worker", "cdp.queue": "generate"})
SCHEDULER = Peer({"app.kubernetes.io/component": "scheduler"})
REDIS = Peer({"app.kubernetes.io/component": "redis"})
MINIO = Peer({"app.kubernetes.io/component": "minio"})
OUTSIDE = Peer(ip="203.0.113.7")
OTHER_POD = Peer({"app": "something"}, namespace="default")
KEDA = Peer({"app": "keda-operator"}, namespace="keda")


def test_network_policies_expose_only_the_api(rendered) -> None:
    docs = rendered["gpu"]
    assert allowed(docs, OUTSIDE, API, 8000) and allowed(docs, OTHER_POD, API, 8000)
    assert not allowed(docs, OUTSIDE, API, 9000)
    for target, port in ((REDIS, 6379), (MINIO, 9000), (WORKER, 9100), (SCHEDULER, 8000)):
        assert not allowed(docs, OUTSIDE, target, port) and not allowed(docs, OTHER_POD, target, port)
    for pod in (API, WORKER, SCHEDULER):
        assert allowed(docs, pod, REDIS, 6379) and allowed(docs, pod, MINIO, 9000)
    assert allowed(docs, KEDA, REDIS, 6379)  # KEDA reads the queue lengths
    assert not allowed(docs, KEDA, MINIO, 9000)
    # workers reach Redis and the store only: not the API, not each other, not the internet
    assert not allowed(docs, WORKER, API, 8000)
    assert not allowed(docs, WORKER, Peer(ip="198.51.100.1"), 443)
    assert not allowed(docs, WORKER, WORKER, 9100)
    # with an external S3 endpoint the service may leave the cluster on 443, and only there
    external = rendered["gpu-s3"]
    assert allowed(external, WORKER, Peer(ip="198.51.100.1"), 443)
    assert not allowed(external, WORKER, Peer(ip="198.51.100.1"), 80)
    assert not allowed(external, WORKER, Peer(ip="10.1.2.3"), 443)  # not other pods of the cluster
