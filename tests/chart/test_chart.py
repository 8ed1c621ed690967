"""The Helm chart with the real helm CLI and the real control plane: lint, schema, renders that
the API server accepts (server-side dry-run), secure defaults, and a release that installs,
upgrades and uninstalls, whose operator -- running as the chart's ServiceAccount, with the
chart's RBAC -- reconciles an instance to Ready."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml  # type: ignore[import-untyped]

from tests.chart.conftest import CHART, ROOT, find, render, run_helm
from tests.operator import conftest as operator_tests
from tests.operator.conftest import CLUSTER_ROLE, CRD_DIR, CRD_NAMES, OperatorProcess, condition, monitoring_crds
from tests.servers import KubeCluster
from tests.waiting import wait_until

MONITORING_CRDS = monitoring_crds("ServiceMonitor", "PrometheusRule")


def test_the_chart_copies_are_the_sources() -> None:
    """CRDs and the operator's permissions have one source each; the chart carries copies."""
    for crd in sorted(CRD_DIR.glob("*.yaml")):
        assert (CHART / "files" / "crds" / crd.name).read_bytes() == crd.read_bytes(), crd.name
    assert sorted(p.name for p in (CHART / "files" / "crds").glob("*.yaml")) == sorted(
        p.name for p in CRD_DIR.glob("*.yaml")
    )
    assert (CHART / "files" / "operator-clusterrole.yaml").read_bytes() == CLUSTER_ROLE.read_bytes()
    assert (CHART / "files" / "cleanup-clusterrole.yaml").read_bytes() == operator_tests.CLEANUP_ROLE.read_bytes()


@pytest.mark.parametrize("script", ["gen_schema.py", "gen_dashboards.py"])
def test_generated_files_are_fresh(script: str) -> None:
    r = subprocess.run([sys.executable, str(ROOT / "charts" / script), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_helm_lint_is_clean(helm: Path) -> None:
    r = run_helm(helm, "lint", str(CHART), "--strict", "--kube-version", "1.36.0")
    assert "0 chart(s) failed" in r.stdout


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["operator.replicas=2"], "additional properties 'replicas' not allowed"),
        (["operator.reconcileSeconds=soon"], "got string, want integer"),
        (["rbac.create=false"], "bind the operator's ServiceAccount yourself"),
        (["instance.enabled=true", "instance.name=" + "x" * 41], "instance.name: at most 40 characters"),
        (["rbac.create=false", "serviceAccount.name=mine"], "cleanup.enabled needs rbac.create"),
        (["cleanup.timeoutSeconds=soon"], "got string, want integer"),
    ],
)
def test_bad_values_fail_with_a_message(helm: Path, sets: list[str], message: str) -> None:
    args = ["template", "pp", str(CHART)]
    for s in sets:
        args += ["--set", s]
    r = run_helm(helm, *args, check=False)
    assert r.returncode != 0 and message in r.stderr, r.stderr


def test_secure_defaults(helm: Path) -> None:
    docs = render(helm)
    (deployment,) = find(docs, "Deployment")
    spec = deployment["spec"]
    assert (spec["replicas"], spec["strategy"]["type"]) == (1, "Recreate")
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]},
    }  # fmt: skip
    assert container["resources"]["limits"]["memory"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for doc in docs:
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "putplace" and labels["app.kubernetes.io/instance"] == "pp"
    # The ClusterRole is exactly the operator's (the tests of the operator run with it).
    (role,) = [r for r in find(docs, "ClusterRole") if r["metadata"]["name"] == "pp-putplace-operator"]
    assert role["rules"] == yaml.safe_load(CLUSTER_ROLE.read_text())["rules"]
    # Monitoring objects only where the API exists; CRDs kept on uninstall.
    assert not find(docs, "ServiceMonitor") and not find(docs, "PrometheusRule")
    assert all(
        c["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        for c in find(docs, "CustomResourceDefinition")
    )
    dashboards = find(docs, "ConfigMap")
    assert len(dashboards) == 3 and all(d["metadata"]["labels"]["grafana_dashboard"] == "1" for d in dashboards)
    for d in dashboards:
        (body,) = d["data"].values()
        assert json.loads(body)["panels"]


HOOK = "helm.sh/hook"


def test_uninstall_runs_a_least_privilege_restricted_cleanup_hook_first(
    helm: Path, crds: KubeCluster, namespace: str
) -> None:
    docs = render(helm, "operator.namespaces={team-a,team-*}", namespace=namespace)
    hooks = {d["kind"]: d for d in docs if HOOK in (d["metadata"].get("annotations") or {})}
    assert sorted(hooks) == ["ClusterRole", "ClusterRoleBinding", "Job", "ServiceAccount"]
    notes = {kind: d["metadata"]["annotations"] for kind, d in hooks.items()}
    assert {n[HOOK] for n in notes.values()} == {"pre-delete"}
    # Its RBAC exists before the Job runs, and nothing of it stays after the hooks succeeded.
    weight = {kind: int(n["helm.sh/hook-weight"]) for kind, n in notes.items()}
    assert max(weight[k] for k in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding")) < weight["Job"]
    for kind, n in notes.items():
        policy = set(n["helm.sh/hook-delete-policy"].split(","))
        assert {"before-hook-creation", "hook-succeeded"} <= policy, kind
        assert ("hook-failed" in policy) == (kind != "Job"), kind  # a failed Job stays for its log
    # Least privilege: list and delete the operator's kinds, nothing else, for its own account.
    assert (
        hooks["ClusterRole"]["rules"]
        == yaml.safe_load(operator_tests.CLEANUP_ROLE.read_text())["rules"]
        == [
            {
                "apiGroups": ["putplace.io"],
                "resources": ["putplaceinstances", "apikeys", "webhooksubscriptions"],
                "verbs": ["list", "delete"],
            }
        ]
    )
    binding = hooks["ClusterRoleBinding"]
    assert binding["roleRef"]["name"] == hooks["ClusterRole"]["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "pp-putplace-cleanup", "namespace": namespace}]
    # The operator's image, the cleanup command, the operator's namespaces; bounded in time.
    job = hooks["Job"]["spec"]
    pod = job["template"]["spec"]
    (container,) = pod["containers"]
    (operator,) = find(docs, "Deployment")
    assert container["image"] == operator["spec"]["template"]["spec"]["containers"][0]["image"]
    assert container["args"] == ["putplace-operator", "cleanup", "--timeout", "240"]
    assert {"name": "PUTPLACE_OPERATOR_NAMESPACES", "value": "team-a,team-*"} in container["env"]
    assert pod["serviceAccountName"] == "pp-putplace-cleanup" and pod["restartPolicy"] == "Never"
    assert job["activeDeadlineSeconds"] > 240 and job["backoffLimit"] <= 1
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]},
    }  # fmt: skip
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    # The API server's Pod Security admission takes its pod at the restricted level.
    crds.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    as_pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "cleanup", "namespace": namespace}, "spec": pod}
    r = crds.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(as_pod), check=False)
    assert r.returncode == 0 and "Warning" not in r.stderr, r.stderr

    off = render(helm, "cleanup.enabled=false")
    assert not [d for d in off if HOOK in (d["metadata"].get("annotations") or {})]


def test_monitoring_renders_where_its_api_exists(helm: Path) -> None:
    served = ["--api-versions", "monitoring.coreos.com/v1/ServiceMonitor", "--api-versions",
              "monitoring.coreos.com/v1/PrometheusRule"]  # fmt: skip
    out = run_helm(helm, "template", "pp", str(CHART), "--kube-version", "1.36.0", *served).stdout
    kinds = [d["kind"] for d in yaml.safe_load_all(out) if d]
    assert "ServiceMonitor" in kinds and "PrometheusRule" in kinds
    off = render(helm, "metrics.serviceMonitor.enabled=false", "metrics.prometheusRule.enabled=false")
    assert not find(off, "ServiceMonitor") and not find(off, "PrometheusRule")


@pytest.fixture
def monitoring_served(crds: KubeCluster) -> Iterator[KubeCluster]:
    crds.apply(*MONITORING_CRDS)
    names = [c["metadata"]["name"] for c in MONITORING_CRDS]
    crds.wait_established(*names)
    yield crds
    crds.kubectl("delete", "crd", *names, "--timeout=60s")  # gone before the next test makes them again


@pytest.mark.parametrize(
    "sets",
    [
        [],
        ["instance.enabled=true", "metrics.serviceMonitor.force=true", "metrics.prometheusRule.force=true"],
        ["crds.enabled=false", "operator.namespaces={team-a,team-b}", "dashboards.enabled=false"],
        ["serviceAccount.create=false", "serviceAccount.name=existing", "crds.keep=false"],
    ],
    ids=["defaults", "instance-and-monitoring", "no-crds-namespaced", "own-service-account"],
)
def test_renders_pass_the_api_servers_validation(
    helm: Path, monitoring_served: KubeCluster, namespace: str, sets: list[str]
) -> None:
    docs = render(helm, *sets, namespace=namespace)
    result = monitoring_served.kubectl(
        "apply", "--dry-run=server", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})
    )
    assert result.stdout.count("(server dry run)") == len(docs), result.stdout


def test_install_upgrade_uninstall_with_the_operator_as_the_charts_service_account(
    helm: Path, crds: KubeCluster, tmp_path: Path
) -> None:
    ns = f"chart-{uuid.uuid4().hex[:6]}"
    kubeconfig = ["--kubeconfig", str(crds.kubeconfig), "-n", ns]
    # The CRDs are in the cluster already (kubectl apply -f crds/): the release adopts them.
    for name in CRD_NAMES:
        crds.kubectl("annotate", "crd", name, "meta.helm.sh/release-name=pp", f"meta.helm.sh/release-namespace={ns}",
                     "--overwrite")  # fmt: skip
        crds.kubectl("label", "crd", name, "app.kubernetes.io/managed-by=Helm", "--overwrite")
    instance = {"database": {"mongodb": {"uriSecretRef": {"name": "mongo"}}}, "storage": {"s3": {"bucket": "contents"}}}
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"instance": {"enabled": True, "spec": instance}}))
    identity = tmp_path / "kubeconfig"
    # No API answers the operator here: a deleted instance is released after one attempt.
    env = {"PUTPLACE_OPERATOR_RECONCILE_SECONDS": "2", "PUTPLACE_OPERATOR_DELETE_RETRIES": "0"}
    operator = OperatorProcess(identity, tmp_path, env=env)
    try:
        run_helm(helm, "install", "pp", str(CHART), *kubeconfig, "--create-namespace", "-f", str(values),
                 "--wait", "--timeout", "120s")  # fmt: skip
        deployment = crds.get("deployment", "pp-putplace-operator", "-n", ns)
        assert deployment["status"]["readyReplicas"] == 1  # scheduled and Ready on a kwok node

        # The operator runs here (kwok runs no containers), as the chart's ServiceAccount.
        crds.token_kubeconfig("pp-putplace-operator", ns, identity)
        operator.start()
        wait_until(
            lambda: condition(crds.get("ppi", "putplace", "-n", ns), "Ready") == ("True", "Available"),
            90, "the chart's instance Ready",
        )  # fmt: skip

        # An upgrade rolls the operator with its new settings.
        run_helm(helm, "upgrade", "pp", str(CHART), *kubeconfig, "-f", str(values),
                 "--set", "operator.reconcileSeconds=45", "--wait", "--timeout", "120s")  # fmt: skip
        pod = crds.get("deployment", "pp-putplace-operator", "-n", ns)["spec"]["template"]["spec"]
        assert {"name": "PUTPLACE_OPERATOR_RECONCILE_SECONDS", "value": "45"} in pod["containers"][0]["env"]
        # What the pre-delete hook Job runs (kwok runs no container: it marks the hook's pod
        # Succeeded), run here as the hook would, while the operator runs: the instance goes.
        done = operator_tests.cleanup(crds.kubeconfig, ns, timeout=60)
        assert done.returncode == 0, done.stderr
        assert crds.kubectl("get", "ppi,apikey", "-n", ns, "-o", "name").stdout.strip() == ""
        operator.check_log()  # the chart's RBAC was enough (during uninstall it goes away, by design)
    finally:
        # As in a cluster, the operator is still running while helm deletes the release.
        run_helm(helm, "uninstall", "pp", *kubeconfig, "--wait", "--timeout", "120s")
        operator.stop()
    # Gone: the operator, its RBAC, and the hook's Job and RBAC. Kept: the CRDs.
    assert crds.kubectl("get", "deployment", "pp-putplace-operator", "-n", ns, check=False).returncode != 0
    assert crds.kubectl("get", "clusterrole", "pp-putplace-operator", check=False).returncode != 0
    for kind in ("job", "serviceaccount"):
        assert crds.kubectl("get", kind, "pp-putplace-cleanup", "-n", ns, check=False).returncode != 0, kind
    for kind in ("clusterrole", "clusterrolebinding"):
        assert crds.kubectl("get", kind, "pp-putplace-cleanup", check=False).returncode != 0, kind
    for name in CRD_NAMES:
        assert crds.kubectl("get", "crd", name, check=False).returncode == 0
    crds.kubectl("delete", "namespace", ns, "--wait=false")
