"""The operator (kopf, in-process) against the real control plane: an instance becomes Ready,
drift is repaired, the admin key is never replaced, spec changes roll out, deletion cascades."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]
from kopf.testing import KopfRunner

from tests.operator.conftest import CRD_DIR, condition
from tests.servers import KubeCluster
from tests.waiting import wait_until


@pytest.fixture
def operator(crds: KubeCluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[KopfRunner]:
    monkeypatch.setenv("KUBECONFIG", str(crds.kubeconfig))
    # Read when kopf imports the handlers module (its timer's interval): nothing imports it before.
    monkeypatch.setenv("PUTPLACE_OPERATOR_RECONCILE_SECONDS", "2")
    # No API answers here (kwok runs no containers): a deleted instance's keys cannot be revoked,
    # and the instance is released after one attempt rather than after minutes of retries.
    monkeypatch.setenv("PUTPLACE_OPERATOR_DELETE_RETRIES", "0")
    args = ["run", "--standalone", "--all-namespaces", "--verbose", "-m", "putplace_operator.handlers"]
    with KopfRunner(args, timeout=60) as runner:
        yield runner
    assert runner.exit_code == 0, runner.output
    assert "Traceback" not in runner.output, runner.output


def production(namespace: str) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((CRD_DIR / "examples" / "production.yaml").read_text())
    body["metadata"]["namespace"] = namespace
    return body


def test_an_instance_is_reconciled_to_ready_and_kept_so(
    operator: KopfRunner, crds: KubeCluster, namespace: str
) -> None:
    crds.apply(production(namespace))
    nodes = len(crds.get("nodes")["items"])

    def instance() -> dict[str, Any]:
        return dict(crds.get("ppi", "putplace-prod", "-n", namespace))

    wait_until(lambda: condition(instance(), "Ready") == ("True", "Available"), timeout=90, what="Ready")
    ready = instance()
    status = ready["status"]
    assert (status["readyReplicas"], status["agentsReady"], status["agentsDesired"]) == (3, nodes, nodes)
    assert status["endpoint"] == f"http://putplace-prod-api.{namespace}.svc:80"
    assert status["observedGeneration"] == ready["metadata"]["generation"]
    assert condition(ready, "Degraded") == ("False", "AsExpected")

    secret = crds.get("secret", "putplace-prod-admin-key", "-n", namespace)
    admin_key = base64.b64decode(secret["data"]["api-key"]).decode()
    assert admin_key.startswith("pp_") and len(admin_key) > 30

    # Drift: a child deleted by hand comes back; a field edited by hand is put back.
    crds.kubectl("delete", "service", "putplace-prod-api", "-n", namespace)
    wait_until(
        lambda: crds.kubectl("get", "service", "putplace-prod-api", "-n", namespace, check=False).returncode == 0,
        timeout=30,
        what="the deleted Service to come back",
    )
    crds.kubectl("scale", "deployment", "putplace-prod-api", "--replicas=1", "-n", namespace)
    wait_until(
        lambda: crds.get("deployment", "putplace-prod-api", "-n", namespace)["spec"]["replicas"] == 3,
        timeout=30,
        what="the scaled Deployment to be put back to 3 replicas",
    )

    # A spec change rolls out (new config checksum); the admin key stays.
    def checksum() -> str:
        d = crds.get("deployment", "putplace-prod-api", "-n", namespace)
        return str(d["spec"]["template"]["metadata"]["annotations"]["putplace.io/config-checksum"])

    before = checksum()
    crds.kubectl(
        "patch", "ppi", "putplace-prod", "-n", namespace, "--type=merge",
        "-p", '{"spec": {"rateLimit": {"requestsPerSecond": 5, "burst": 10}}}',
    )  # fmt: skip
    wait_until(lambda: checksum() != before, timeout=30, what="the new configuration to roll out")
    config = crds.get("configmap", "putplace-prod-api", "-n", namespace)["data"]
    assert (config["PUTPLACE_RATE_LIMIT"], config["PUTPLACE_RATE_LIMIT_BURST"]) == ("5", "10")
    secret = crds.get("secret", "putplace-prod-admin-key", "-n", namespace)
    assert base64.b64decode(secret["data"]["api-key"]).decode() == admin_key

    # Deletion cascades to every child (the garbage collector follows the owner references).
    crds.kubectl("delete", "ppi", "putplace-prod", "-n", namespace, "--wait=true", "--timeout=60s")
    wait_until(
        lambda: crds.kubectl("get", "deployment,daemonset,service,configmap", "-n", namespace, "-l",
                             "app.kubernetes.io/instance=putplace-prod", "-o", "name").stdout.strip() == "",
        timeout=60,
        what="the children to be deleted",
    )  # fmt: skip
