"""Rendering and offline checks of the Kubernetes manifests under deploy/k8s (tests/test_k8s_manifests.py).

- :func:`render`: ``kubectl kustomize <overlay>`` (kubectl's built-in kustomize; nothing reaches a cluster).
- :func:`validate`: every object against the Kubernetes OpenAPI schemas shipped in ``kubernetes-validate``
  (strict: unknown fields are errors); KEDA's ScaledObject, a CRD those schemas lack, against the schema in
  deploy/k8s/schemas/.
- :func:`allowed`: whether the NetworkPolicies of a rendering let one pod open a TCP connection to another
  (Kubernetes' semantics: a connection needs an egress rule of the source, when any policy selects it for
  egress, and an ingress rule of the destination, when any policy selects it for ingress).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("cpu-dev", "gpu", "gpu-s3")
KEDA_SCHEMA = K8S / "schemas" / "keda-scaledobject.json"


def kubectl() -> str | None:
    return shutil.which("kubectl")


def render(overlay: str) -> list[dict[str, Any]]:
    out = subprocess.run([kubectl() or "kubectl", "kustomize", str(K8S / "overlays" / overlay)],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def validate(doc: dict[str, Any]) -> None:
    """Raise when ``doc`` does not match its schema (kubernetes_validate.ValidationError or
    jsonschema.ValidationError)."""
    if doc.get("apiVersion", "").startswith("keda.sh/"):
        import jsonschema

        jsonschema.validate(doc, json.loads(KEDA_SCHEMA.read_text()))
        return
    import kubernetes_validate

    kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_specs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The pod template of every workload (Deployment, StatefulSet, Job), by ``Kind/name``."""
    return {f"{d['kind']}/{d['metadata']['name']}": d["spec"]["template"]
            for d in docs if d["kind"] in ("Deployment", "StatefulSet", "Job")}


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", []) if "value" in e}


# ------------------------------------------------------------------------------------------ policies
@dataclass(frozen=True)
class Peer:
    """One end of a connection: a pod of the namespace (its labels), a pod elsewhere, or an address outside
    the cluster (``ip``)."""

    labels: dict[str, str] = field(default_factory=dict)
    namespace: str = "cdp"
    ip: str | None = None


def _selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    if selector is None:
        return False
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        present = expr["key"] in labels
        if expr["operator"] == "In" and labels.get(expr["key"]) not in expr["values"]:
            return False
        if expr["operator"] == "NotIn" and labels.get(expr["key"]) in expr["values"]:
            return False
        if expr["operator"] == "Exists" and not present:
            return False
        if expr["operator"] == "DoesNotExist" and present:
            return False
    return True


def _in_block(ip: str, block: dict[str, Any]) -> bool:
    import ipaddress

    address = ipaddress.ip_address(ip)
    if address not in ipaddress.ip_network(block["cidr"]):
        return False
    return not any(address in ipaddress.ip_network(net) for net in block.get("except", []))


def _peer_matches(rule_peer: dict[str, Any], peer: Peer, policy_ns: str) -> bool:
    if "ipBlock" in rule_peer:
        return peer.ip is not None and _in_block(peer.ip, rule_peer["ipBlock"])
    if peer.ip is not None:
        return False
    ns_sel, pod_sel = rule_peer.get("namespaceSelector"), rule_peer.get("podSelector")
    ns_labels = {"kubernetes.io/metadata.name": peer.namespace}
    ns_ok = _selects(ns_sel, ns_labels) if ns_sel is not None else peer.namespace == policy_ns
    pod_ok = _selects(pod_sel, peer.labels) if pod_sel is not None else True
    return ns_ok and pod_ok


def _rule_allows(rule: dict[str, Any], key: str, peer: Peer, port: int, ns: str) -> bool:
    ports = rule.get("ports")
    if ports and not any(p.get("protocol", "TCP") == "TCP" and p.get("port") == port for p in ports):
        return False
    peers = rule.get(key)
    return not peers or any(_peer_matches(p, peer, ns) for p in peers)


def _side_allows(policies: list[dict[str, Any]], pod: Peer, other: Peer, port: int, direction: str) -> bool:
    if pod.ip is not None:  # outside the cluster: no policy applies
        return True
    kind, key = ("Ingress", "from") if direction == "ingress" else ("Egress", "to")
    selecting = [p for p in policies if p["metadata"].get("namespace", "cdp") == pod.namespace
                 and kind in p["spec"].get("policyTypes", ["Ingress"])
                 and _selects(p["spec"]["podSelector"], pod.labels)]
    if not selecting:
        return True
    return any(_rule_allows(rule, key, other, port, pod.namespace)
               for p in selecting for rule in p["spec"].get(direction, []))


def allowed(docs: list[dict[str, Any]], source: Peer, dest: Peer, port: int) -> bool:
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    return (_side_allows(policies, source, dest, port, "egress")
            and _side_allows(policies, dest, source, port, "ingress"))
