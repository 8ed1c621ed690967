"""The children an instance should have, built by pure functions, checked by a real API server.

Each example instance is created for real (so the server applies the CRD's defaults), its
children are built from what the server returned and applied: server-side dry-run for all
(schema, defaults, admission), and for real where kwok can run the pods.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from putplace_operator.manifests import Instance, Manifest, agent, api, children
from tests.operator.conftest import CRD_DIR
from tests.servers import KubeCluster
from tests.waiting import wait_until

EXAMPLES = CRD_DIR / "examples"


def create_instance(kube: KubeCluster, namespace: str, source: Path | dict[str, Any]) -> Instance:
    body = yaml.safe_load(source.read_text()) if isinstance(source, Path) else source
    kube.apply(body, namespace=namespace)
    created = kube.get("putplaceinstance", body["metadata"]["name"], "-n", namespace)
    return Instance.from_body(created)


def server_dry_run(kube: KubeCluster, namespace: str, manifests: list[Manifest]) -> None:
    listing = {"apiVersion": "v1", "kind": "List", "items": manifests}
    r = kube.kubectl(
        "apply", "--server-side", "--field-manager=putplace-operator", "--dry-run=server", "-n", namespace,
        "-f", "-", input=json.dumps(listing), check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr


def by_kind(manifests: list[Manifest]) -> dict[str, Manifest]:
    return {f"{m['kind']}/{m['metadata']['name']}": m for m in manifests}


@pytest.mark.parametrize("example", ["minimal.yaml", "production.yaml"])
def test_children_of_the_examples_pass_the_api_servers_validation(
    crds: KubeCluster, namespace: str, example: str
) -> None:
    instance = create_instance(crds, namespace, EXAMPLES / example)
    manifests = children(instance)
    server_dry_run(crds, namespace, [*manifests, api.admin_secret(instance, "pp_generated")])
    for m in manifests:
        owner = m["metadata"]["ownerReferences"][0]
        assert (owner["uid"], owner["controller"]) == (instance.uid, True)  # deletion cascades


def test_minimal_instance(crds: KubeCluster, namespace: str) -> None:
    i = create_instance(crds, namespace, EXAMPLES / "minimal.yaml")
    kinds = by_kind(children(i))
    assert set(kinds) == {
        f"ServiceAccount/{i.api_name}", f"ConfigMap/{i.api_name}", f"PersistentVolumeClaim/{i.name}-db",
        f"PersistentVolumeClaim/{i.name}-content", f"Deployment/{i.api_name}", f"Service/{i.api_name}",
        f"ApiKey/{i.agent_name}", f"DaemonSet/{i.agent_name}",
    }  # fmt: skip
    deployment = kinds[f"Deployment/{i.api_name}"]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}  # a ReadWriteOnce claim cannot be shared
    assert "topologySpreadConstraints" not in deployment["spec"]["template"]["spec"]  # one pod: nothing to spread
    config = kinds[f"ConfigMap/{i.api_name}"]["data"]
    assert config["PUTPLACE_DATABASE_URL"] == "sqlite:////data/db/putplace.db"
    assert config["PUTPLACE_STORAGE_URL"] == "file:///data/content"


def test_production_instance(crds: KubeCluster, namespace: str) -> None:
    i = create_instance(crds, namespace, EXAMPLES / "production.yaml")
    kinds = by_kind(children(i))
    assert f"PodDisruptionBudget/{i.api_name}" in kinds
    assert f"ApiKey/{i.name}-metrics" in kinds and kinds[f"ApiKey/{i.name}-metrics"]["spec"]["scopes"] == ["metrics"]
    assert not any(k.startswith("PersistentVolumeClaim/") for k in kinds)
    pod = kinds[f"Deployment/{i.api_name}"]["spec"]["template"]["spec"]
    (spread,) = pod["topologySpreadConstraints"]  # replicas on different nodes where possible
    assert (spread["topologyKey"], spread["whenUnsatisfiable"]) == ("kubernetes.io/hostname", "ScheduleAnyway")
    assert (
        spread["labelSelector"]["matchLabels"] == kinds[f"Deployment/{i.api_name}"]["spec"]["selector"]["matchLabels"]
    )
    env = {e["name"]: e.get("valueFrom", {}).get("secretKeyRef") for e in pod["containers"][0]["env"]}
    assert env["PUTPLACE_DATABASE_URL"] == {"name": "putplace-mongodb", "key": "uri"}
    assert env["PUTPLACE_S3_SECRET_ACCESS_KEY"] == {"name": "putplace-s3", "key": "secretAccessKey"}
    assert env["PUTPLACE_ADMIN_KEY"] == {"name": i.admin_secret, "key": api.KEY_FIELD}
    config = kinds[f"ConfigMap/{i.api_name}"]["data"]
    assert config["PUTPLACE_STORAGE_URL"] == "s3://putplace-contents/prod/"
    assert config["PUTPLACE_ALLOWED_MIME_TYPES"] == "text/*,application/json,application/gzip"
    assert not any("secret" in v.lower() or "mongodb://" in v for v in config.values())  # secrets stay in Secrets
    args = kinds[f"DaemonSet/{i.agent_name}"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:4] == ["putplace-agent", "sync", "/host/var/log", "/host/etc/kubernetes"]
    assert args[args.index("--strip-prefix") + 1] == "/host"
    assert args[args.index("--server") + 1] == f"http://{i.api_name}.{namespace}.svc:80"


def test_pods_run_restricted_and_agents_read_only(crds: KubeCluster, namespace: str) -> None:
    i = create_instance(crds, namespace, EXAMPLES / "production.yaml")
    api_pod = api.deployment(i)["spec"]["template"]["spec"]
    assert api_pod["securityContext"]["runAsNonRoot"] is True
    container = api_pod["containers"][0]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]},
    }  # fmt: skip
    assert [p["httpGet"]["path"] for p in (container["livenessProbe"], container["readinessProbe"])] == [
        "/healthz",
        "/readyz",
    ]
    daemon_set = agent.daemon_set(i)
    assert daemon_set is not None
    agent_container = daemon_set["spec"]["template"]["spec"]["containers"][0]
    assert agent_container["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["DAC_READ_SEARCH"]}
    assert agent_container["securityContext"]["readOnlyRootFilesystem"] is True
    host_mounts = [m for m in agent_container["volumeMounts"] if m["mountPath"].startswith(agent.HOST_ROOT)]
    assert host_mounts and all(m["readOnly"] for m in host_mounts)
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in agent_container["env"]}
    assert env == {"NODE_NAME": "spec.nodeName", "NODE_IP": "status.hostIP"}


def test_a_settings_change_rolls_the_pods_and_nothing_else_does(crds: KubeCluster, namespace: str) -> None:
    i = create_instance(crds, namespace, EXAMPLES / "production.yaml")

    def checksum(instance: Instance) -> str:
        annotations = api.deployment(instance)["spec"]["template"]["metadata"]["annotations"]
        return str(annotations["putplace.io/config-checksum"])

    same = Instance(i.name, i.namespace, i.uid, json.loads(json.dumps(i.spec)))
    assert checksum(same) == checksum(i)
    changed = Instance(i.name, i.namespace, i.uid, {**i.spec, "rateLimit": {"requestsPerSecond": 5, "burst": 5}})
    assert checksum(changed) != checksum(i)
    scaled = Instance(i.name, i.namespace, i.uid, {**i.spec, "replicas": 5})
    assert checksum(scaled) == checksum(i)  # scaling is not a restart


def test_no_agent_when_disabled_and_no_pdb_for_one_replica(crds: KubeCluster, namespace: str) -> None:
    body = {
        "apiVersion": "putplace.io/v1alpha1",
        "kind": "PutPlaceInstance",
        "metadata": {"name": "quiet"},
        "spec": {"agent": {"enabled": False}},
    }
    kinds = by_kind(children(create_instance(crds, namespace, body)))
    assert not any(k.startswith(("DaemonSet/", "ApiKey/", "PodDisruptionBudget/")) for k in kinds)


def test_production_children_run_on_fake_nodes(crds: KubeCluster, namespace: str) -> None:
    """Applied for real: the Deployment's 3 pods and one agent per node get scheduled and run (kwok)."""
    i = create_instance(crds, namespace, EXAMPLES / "production.yaml")
    manifests = [m for m in children(i) if m["kind"] not in ("ApiKey",)]  # ApiKeys need the operator
    crds.apply(*manifests, namespace=namespace)
    nodes = len(crds.get("nodes")["items"])

    def ready() -> bool:
        deployment = crds.get("deployment", i.api_name, "-n", namespace)
        daemon_set = crds.get("daemonset", i.agent_name, "-n", namespace)
        return bool(
            deployment.get("status", {}).get("readyReplicas") == 3
            and daemon_set.get("status", {}).get("numberReady") == nodes
        )

    wait_until(ready, timeout=60, what="3 API pods and one agent per node ready")
