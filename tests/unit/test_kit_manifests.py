"""The operator's kit passes the tools that would run it: Kubernetes schemas, systemd.

Every manifest under server/k8s/ is validated (strict: unknown fields are errors) against
the OpenAPI schemas of a pinned Kubernetes release, shipped offline by kubernetes-validate;
HPAs point at workloads that exist; NetworkPolicies name ports their pods expose.  The
systemd units pass ``systemd-analyze verify`` where systemd is installed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "server" / "k8s"
KUBERNETES = "1.31.0"  # pinned: the oldest release we promise (current in 2025)
UNITS = [ROOT / "server" / "edgeai-server.service", ROOT / "client" / "edgeai-agent.service"]

kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (dev)")


def manifests() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc)
        for path in sorted(K8S.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8"))
        if doc is not None
    ]


def test_the_schemas_ship_with_the_package() -> None:
    # Offline: the pinned version's schemas are files inside the wheel, never downloaded.
    base = Path(kv.__file__).parent / "kubernetes-json-schema" / f"v{KUBERNETES}-local-strict"
    assert base.is_dir()
    assert any(base.glob("deployment-apps-v1.json"))


@pytest.mark.parametrize(("name", "doc"), manifests(), ids=[n for n, _ in manifests()])
def test_every_manifest_is_valid_for_the_pinned_kubernetes(name: str, doc: dict[str, Any]) -> None:
    try:
        kv.validate(doc, KUBERNETES, strict=True)
    except kv.ValidationError as exc:
        pytest.fail(f"{name}: {exc.message} at {'.'.join(map(str, exc.path))}")


def test_a_broken_manifest_is_caught() -> None:
    # The validator is not a no-op: a typo'd field and a wrong type both fail.
    doc = dict(manifests()[0][1])
    with pytest.raises(kv.ValidationError):
        kv.validate({**doc, "spec": {"replicas": "two"}, "kind": "Deployment"}, KUBERNETES, True)
    with pytest.raises(kv.ValidationError):
        kv.validate({**doc, "metdata": {}}, KUBERNETES, strict=True)


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in manifests() if d["kind"] == kind}


def test_autoscalers_target_the_stateless_workloads() -> None:
    hpas = by_kind("HorizontalPodAutoscaler")
    targets = {
        (h["spec"]["scaleTargetRef"]["kind"], h["spec"]["scaleTargetRef"]["name"])
        for h in hpas.values()
    }
    assert targets == {("StatefulSet", "edgeai-collector"), ("Deployment", "edgeai-dashboard")}
    for kind, name in targets:
        workload = by_kind(kind)[name]
        for c in workload["spec"]["template"]["spec"]["containers"]:
            assert c["resources"]["requests"]["cpu"], (name, "CPU utilisation needs a request")
    # The stateful parts never scale: one SuperLink database, one broker store.
    assert by_kind("Deployment")["edgeai-server"]["spec"]["replicas"] == 1
    assert by_kind("StatefulSet")["mosquitto"]["spec"]["replicas"] == 1
    # One broker account per collector replica, up to maxReplicas.
    server_toml = by_kind("ConfigMap")["edgeai-server-config"]["data"]["federation.toml"]
    acl = by_kind("ConfigMap")["mosquitto-config"]["data"]["acl"]
    for i in range(hpas["edgeai-collector"]["spec"]["maxReplicas"]):
        assert f'"edgeai-collector-{i}"' in server_toml
        assert f"user edgeai-collector-{i}\n" in acl
    assert 'shared_group = "collectors"' in server_toml


def test_network_policies_name_ports_their_pods_expose() -> None:
    workloads = {**by_kind("Deployment"), **by_kind("StatefulSet")}
    labels = {n: w["spec"]["template"]["metadata"]["labels"] for n, w in workloads.items()}
    ports = {
        n: {p["name"] for c in w["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
        for n, w in workloads.items()
    }
    policies = by_kind("NetworkPolicy")
    assert policies["edgeai-default-deny"]["spec"].get("ingress") is None  # deny all ingress
    covered = set()
    for name, policy in policies.items():
        selector = policy["spec"]["podSelector"]["matchLabels"]
        pods = [n for n, lab in labels.items() if selector.items() <= lab.items()]
        assert pods, f"{name} selects no pods"
        covered.update(pods)
        for rule in policy["spec"].get("ingress", []):
            assert rule["from"], f"{name}: a rule open to everyone"
            for port in rule["ports"]:
                for pod in pods:
                    assert port["port"] in ports[pod], (name, pod, port)
    assert covered == set(workloads)
    broker_from = policies["mosquitto"]["spec"]["ingress"][0]["from"]
    allowed = {
        tuple(f["podSelector"]["matchLabels"].values()) for f in broker_from if "podSelector" in f
    }
    assert allowed == {("edgeai-server",), ("edgeai-collector",)}
    dashboard_from = policies["edgeai-dashboard"]["spec"]["ingress"][0]["from"]
    assert all("ipBlock" not in f for f in dashboard_from)


@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_systemd_units_verify(unit: Path, tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed (apt-get install systemd)")
    # verify checks that ExecStart exists: point it at this checkout's edgeai, nothing else.
    edgeai = shutil.which("edgeai") or str(Path(sys.executable).parent / "edgeai")
    copy = tmp_path / unit.name
    copy.write_text(unit.read_text().replace("/opt/edgeai/venv/bin/edgeai", edgeai))
    done = subprocess.run(
        [tool, "verify", str(copy)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert unit.name not in done.stderr, done.stderr  # no warnings about the unit either
