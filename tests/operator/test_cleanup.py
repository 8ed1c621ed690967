"""``putplace-operator cleanup``, what the chart's pre-delete hook Job runs, as a real process with
only its own ClusterRole (``operator/deploy/cleanup-clusterrole.yaml``): with the operator running,
every PutPlaceInstance and ApiKey of the watched namespaces is deleted, their keys are revoked at
the API and nothing is left; with the operator gone, it fails at its deadline with one line
instead of waiting forever."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml  # type: ignore[import-untyped]

from tests.api.conftest import ADMIN_KEY
from tests.operator.conftest import CLEANUP_ROLE, OperatorProcess, admin_secret, cleanup, condition
from tests.operator.test_apikeys import apikey, secret_key, status
from tests.processes import ApiProcess
from tests.servers import KubeCluster
from tests.waiting import wait_until

ACCOUNT, ACCOUNT_NAMESPACE = "putplace-cleanup", "putplace-system"


@pytest.fixture
def operator(api_process: ApiProcess, operator_kubeconfig: Path, tmp_path: Path) -> Iterator[OperatorProcess]:
    """The operator as the chart runs it, reaching the test's API; quick to give up on a deletion."""
    env = {"PUTPLACE_OPERATOR_API_URL_TEMPLATE": api_process.url, "PUTPLACE_OPERATOR_RECONCILE_SECONDS": "1",
           "PUTPLACE_OPERATOR_RETRY_MIN_SECONDS": "0.5", "PUTPLACE_OPERATOR_DELETE_RETRIES": "2"}  # fmt: skip
    op = OperatorProcess(operator_kubeconfig, tmp_path, env=env)
    op.start()
    yield op
    op.stop()
    op.check_log()


@pytest.fixture(scope="module")
def cleanup_kubeconfig(crds: KubeCluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kubeconfig for a ServiceAccount bound to the cleanup's ClusterRole, and to nothing else."""
    role = yaml.safe_load(CLEANUP_ROLE.read_text())
    name = role["metadata"]["name"]
    crds.apply(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ACCOUNT_NAMESPACE}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": ACCOUNT, "namespace": ACCOUNT_NAMESPACE}},
        role,
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": ACCOUNT, "namespace": ACCOUNT_NAMESPACE}]},
    )  # fmt: skip
    return crds.token_kubeconfig(ACCOUNT, ACCOUNT_NAMESPACE, tmp_path_factory.mktemp("cleanup") / "kubeconfig")


def objects(kube: KubeCluster, namespace: str) -> str:
    return kube.kubectl("get", "ppi,apikey", "-n", namespace, "-o", "name").stdout.strip()


def instance_with_keys(kube: KubeCluster, namespace: str) -> list[str]:
    """An instance (with its agents' ApiKey) and two ApiKeys of users, all Ready; their keys."""
    kube.apply(
        admin_secret("pp", namespace, ADMIN_KEY),
        {"apiVersion": "putplace.io/v1alpha1", "kind": "PutPlaceInstance", "metadata": {"name": "pp"}, "spec": {}},
        apikey("ci", "read", instance="pp"),
        apikey("app", "write", instance="pp"),
        namespace=namespace,
    )
    keys = []
    for name, secret in (("ci", "ci"), ("app", "app"), ("pp-agent", "pp-agent-key")):
        wait_until(
            lambda n=name: condition(kube.get("apikey", n, "-n", namespace), "Ready") == ("True", "KeyIssued"),
            30, f"ApiKey {name} Ready",
        )  # fmt: skip
        key = secret_key(kube, namespace, secret)
        assert key is not None
        keys.append(key)
    return keys


def test_cleanup_deletes_what_the_operator_watches_and_waits_until_it_is_gone(
    api_process: ApiProcess, operator: OperatorProcess, crds: KubeCluster, cleanup_kubeconfig: Path, namespace: str
) -> None:
    keys = instance_with_keys(crds, namespace)
    assert all(status(api_process, key, "GET", "/metrics") != 401 for key in keys)
    other = f"{namespace}-other"  # not watched: left alone
    crds.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": other}})
    crds.apply(apikey("elsewhere", "read", instance="none"), namespace=other)
    try:
        r = cleanup(cleanup_kubeconfig, f"{namespace},nothing-*", timeout=60)
        assert r.returncode == 0, r.stderr
        assert "Traceback" not in r.stderr and "forbidden" not in r.stderr
        assert f"cleanup: deleting 4 PutPlace objects in {namespace}, nothing-*" in r.stderr
        assert "cleanup: done" in r.stderr
        assert objects(crds, namespace) == ""
        # The operator revoked every key on the way.
        assert all(status(api_process, key, "GET", "/metrics") == 401 for key in keys)
        assert objects(crds, other) == "apikey.putplace.io/elsewhere"
    finally:
        crds.kubectl("delete", "namespace", other, "--wait=false")
    # Nothing there: done at once.
    again = cleanup(cleanup_kubeconfig, namespace, timeout=10)
    assert again.returncode == 0 and "deleting 0 PutPlace objects" in again.stderr, again.stderr


def test_without_the_operator_cleanup_fails_at_its_deadline_with_one_line(
    api_process: ApiProcess, operator: OperatorProcess, crds: KubeCluster, cleanup_kubeconfig: Path, namespace: str
) -> None:
    instance_with_keys(crds, namespace)
    operator.stop()  # the instance and the users' keys keep its finalizer; the agents' key has none
    try:
        # Ends at its own deadline (the last line says so), not the harness's (timeout + 60 s).
        r = cleanup(cleanup_kubeconfig, namespace, timeout=5)
        assert r.returncode == 1, r.stderr
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith("putplace-operator cleanup: 3 objects still there after 5 s: "), last
        assert "(finalizers: putplace.io/operator)" in last and "is the operator running?" in last
        assert "Traceback" not in r.stderr
    finally:
        operator.start()
    # The operator back, the objects it held go.
    wait_until(lambda: objects(crds, namespace) == "", 60, "the objects released by the operator")
