"""Least privilege, shown: the operator process runs as a ServiceAccount bound only to the
ClusterRole the chart ships, and reconciles a production-like instance (with its agent and
metrics ApiKeys, and a ServiceMonitor and PodMonitor once their CRDs exist) without a single refusal; the same
identity cannot read Secrets wholesale or delete what it manages. Then the operator limited to
one namespace leaves the others alone."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import httpx
import yaml  # type: ignore[import-untyped]

from tests.api.conftest import ADMIN_KEY
from tests.operator.conftest import CRD_DIR, OperatorProcess, admin_secret, condition, monitoring_crds
from tests.processes import ApiProcess
from tests.servers import KubeCluster
from tests.waiting import wait_until

MONITORING_CRDS = monitoring_crds("ServiceMonitor", "PodMonitor")
FILE = {
    "filepath": "/x", "hostname": "node-1", "ip_address": "127.0.0.1", "sha256": "0" * 64, "file_size": 1,
    "file_mode": 33188, "file_uid": 0, "file_gid": 0, "file_mtime": 1.0, "file_atime": 1.0, "file_ctime": 1.0,
}  # fmt: skip


def operator(kubeconfig: Path, api: ApiProcess, workdir: Path) -> OperatorProcess:
    env = {"PUTPLACE_OPERATOR_API_URL_TEMPLATE": api.url, "PUTPLACE_OPERATOR_RECONCILE_SECONDS": "1"}
    return OperatorProcess(kubeconfig, workdir, env=env)


def key_of(kube: KubeCluster, namespace: str, secret: str) -> str:
    return base64.b64decode(kube.get("secret", secret, "-n", namespace)["data"]["api-key"]).decode()


def test_the_operator_needs_no_more_than_its_cluster_role(
    crds: KubeCluster, operator_kubeconfig: Path, api_process: ApiProcess, namespace: str, tmp_path: Path
) -> None:
    # The identity really is limited.
    as_operator = ["--kubeconfig", str(operator_kubeconfig)]
    for verb in (["list", "secrets", "-A"], ["delete", "deployments", "-n", namespace], ["create", "pods"]):
        answer = crds.kubectl("auth", "can-i", *verb, *as_operator, check=False).stdout.strip()
        assert answer == "no", (verb, answer)

    op = operator(operator_kubeconfig, api_process, tmp_path)
    op.start()
    try:
        body: dict[str, Any] = yaml.safe_load((CRD_DIR / "examples" / "production.yaml").read_text())
        crds.apply(admin_secret("putplace-prod", namespace, ADMIN_KEY), body, namespace=namespace)

        def instance() -> dict[str, Any]:
            return dict(crds.get("ppi", "putplace-prod", "-n", namespace))

        wait_until(lambda: condition(instance(), "Ready") == ("True", "Available"), 90, "the instance Ready")
        for name in ("putplace-prod-agent", "putplace-prod-metrics"):
            wait_until(
                lambda n=name: condition(crds.get("apikey", n, "-n", namespace), "Ready") == ("True", "KeyIssued"),
                30, f"ApiKey {name} Ready",
            )  # fmt: skip
        # The agents' key may write and nothing else, and only under the agents' host paths;
        # Prometheus' may only scrape.
        agent_key = key_of(crds, namespace, "putplace-prod-agent-key")
        metrics_key = key_of(crds, namespace, "putplace-prod-metrics-key")
        assert httpx.get(api_process.url + "/files", headers={"X-API-Key": agent_key}).status_code == 403
        for path, expected in (("/etc/kubernetes/admin.conf", 201), ("/var/log/syslog", 201), ("/root/.ssh/x", 403)):
            record = {**FILE, "filepath": path}
            answer = httpx.post(api_process.url + "/put_file", headers={"X-API-Key": agent_key}, json=record)
            assert answer.status_code == expected, (path, answer.text)
        assert (
            httpx.get(api_process.url + "/metrics", headers={"Authorization": f"Bearer {metrics_key}"}).status_code
            == 200
        )
        assert httpx.get(api_process.url + "/files", headers={"X-API-Key": metrics_key}).status_code == 403

        # No ServiceMonitor (API) or PodMonitor (agents) without their CRDs; they appear with them.
        assert crds.kubectl("get", "servicemonitors,podmonitors", "-n", namespace, check=False).returncode != 0
        crds.apply(*MONITORING_CRDS)
        try:
            for kind, name, secret in (
                ("servicemonitor", "putplace-prod-api", "putplace-prod-metrics-key"),
                ("podmonitor", "putplace-prod-agent", '"port": "metrics"'),
            ):
                found = wait_until(
                    lambda k=kind, n=name: crds.kubectl("get", k, n, "-n", namespace, "-o", "json", check=False).stdout,
                    60, f"a {kind}",
                )  # fmt: skip
                assert secret in found
        finally:
            crds.kubectl("delete", "crd", *(c["metadata"]["name"] for c in MONITORING_CRDS), "--timeout=60s")
    finally:
        op.stop()
    op.check_log()


def test_an_operator_limited_to_a_namespace_leaves_the_others_alone(
    crds: KubeCluster, operator_kubeconfig: Path, api_process: ApiProcess, tmp_path: Path
) -> None:
    watched, other = (f"ns-{n}-{tmp_path.name[-6:]}".lower().replace("_", "-") for n in ("a", "b"))
    for ns in (watched, other):
        crds.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    op = operator(operator_kubeconfig, api_process, tmp_path)
    op.start("--namespace", watched)
    try:
        key = {"apiVersion": "putplace.io/v1alpha1", "kind": "ApiKey", "metadata": {"name": "k"},
               "spec": {"instanceRef": {"name": "pp"}, "scopes": ["read"]}}  # fmt: skip
        instance = {"apiVersion": "putplace.io/v1alpha1", "kind": "PutPlaceInstance", "metadata": {"name": "pp"},
                    "spec": {"agent": {"enabled": False}}}  # fmt: skip
        for ns in (other, watched):  # the unwatched one first: it has had the longer time when we look
            crds.apply(admin_secret("pp", ns, ADMIN_KEY), instance, key, namespace=ns)
        wait_until(
            lambda: condition(crds.get("apikey", "k", "-n", watched), "Ready") == ("True", "KeyIssued"),
            60, "the key in the watched namespace",
        )  # fmt: skip
        assert "status" not in crds.get("apikey", "k", "-n", other)
        assert "status" not in crds.get("ppi", "pp", "-n", other)
        assert crds.kubectl("get", "deployment", "pp-api", "-n", other, check=False).returncode != 0
    finally:
        op.stop()
        for ns in (watched, other):
            crds.kubectl("delete", "namespace", ns, "--wait=false")
    op.check_log()
