"""The operator against the real control plane of the tests (etcd, kube-apiserver, controller-manager,
scheduler, kwok fake nodes; started by ``tests.servers``, or reused from ``PUTPLACE_TEST_KUBECONFIG``).

* **Instance to Ready:** ``kubectl apply`` of the production example (3 API replicas, agents on
  every node, a metrics key) until its Ready condition is True, ``--rounds`` times (median).
  Baseline in the same run: the floor the cluster itself imposes, a bare Deployment of 3
  replicas plus a DaemonSet applied with kubectl until both report ready (kwok marks pods Ready
  at once, so this is the controllers' and the scheduler's own latency).
* **ApiKeys:** ``--keys`` (default 200) ApiKeys applied in one ``kubectl apply``, until every one
  is Ready (key made at a real ``putplace-api`` process, Secret written): keys per second, and
  the operator process's peak RSS (VmHWM). Baseline in the same run: the same number of keys
  made directly with ``POST /api_keys`` by one client, one after another (the API's own rate).

The operator is the ``putplace-operator`` console script as deployed (a process, admin
kubeconfig, reaching the API through ``PUTPLACE_OPERATOR_API_URL_TEMPLATE``).

    .venv/bin/python bench/operator_bench.py [--keys 200] [--rounds 3]

Goals: 200 keys in under a minute (>= 3.3 keys/s); operator peak RSS < 256 MiB, the memory limit
its Deployment should have (the idle process after start is shown beside it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import machine_line, peak_rss_mib, print_table, proc_status  # noqa: E402
from tests.api.conftest import ADMIN_KEY  # noqa: E402
from tests.operator.conftest import CRD_DIR, CRD_NAMES, OperatorProcess, admin_secret, condition  # noqa: E402
from tests.processes import ApiProcess  # noqa: E402
from tests.servers import SERVERS, KubeCluster  # noqa: E402
from tests.servers.base import workdir as scratch  # noqa: E402
from tests.waiting import wait_until  # noqa: E402


def cluster(stack: ExitStack, workdir: Path) -> KubeCluster:
    reused = KubeCluster.from_env(os.environ)
    if reused is not None:
        return reused
    SERVERS["kube"].install()
    server = SERVERS["kube"].start(stack.enter_context(scratch("kube")), log_path=workdir / "kube.log")
    stack.callback(server.stop)
    started = KubeCluster.from_env(server.env)
    assert started is not None
    return started


NAMESPACES: list[str] = []


def new_namespace(kube: KubeCluster) -> str:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    NAMESPACES.append(name)
    return name


def delete_namespaces(kube: KubeCluster) -> None:
    """While the operator still runs, so that the ApiKeys' finalizers are released."""
    if NAMESPACES:
        kube.kubectl("delete", "namespace", *NAMESPACES, "--timeout=300s", timeout=330)


def instance_to_ready(kube: KubeCluster) -> float:
    ns = new_namespace(kube)
    body: dict[str, Any] = yaml.safe_load((CRD_DIR / "examples" / "production.yaml").read_text())
    kube.apply(admin_secret("putplace-prod", ns, ADMIN_KEY), namespace=ns)
    start = time.perf_counter()
    kube.apply(body, namespace=ns)
    wait_until(
        lambda: condition(kube.get("ppi", "putplace-prod", "-n", ns), "Ready") == ("True", "Available"),
        120, "the instance Ready",
    )  # fmt: skip
    return time.perf_counter() - start


def bare_to_ready(kube: KubeCluster) -> float:
    ns = new_namespace(kube)
    labels = {"app": "bare"}
    pod = {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "bare"},
                  "spec": {"replicas": 3, "selector": {"matchLabels": labels}, "template": pod}}  # fmt: skip
    daemon_set = {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "bare"},
                  "spec": {"selector": {"matchLabels": labels}, "template": pod}}  # fmt: skip
    start = time.perf_counter()
    kube.apply(deployment, daemon_set, namespace=ns)

    def ready() -> bool:
        d = kube.get("deployment", "bare", "-n", ns).get("status", {})
        s = kube.get("daemonset", "bare", "-n", ns).get("status", {})
        return (
            d.get("readyReplicas") == 3
            and s.get("desiredNumberScheduled", 0) > 0
            and (s.get("numberReady") == s.get("desiredNumberScheduled"))
        )

    wait_until(ready, 120, "the bare workload ready")
    return time.perf_counter() - start


def keys_to_ready(kube: KubeCluster, count: int) -> float:
    ns = new_namespace(kube)
    kube.apply(
        admin_secret("pp", ns, ADMIN_KEY),
        {"apiVersion": "putplace.io/v1alpha1", "kind": "PutPlaceInstance", "metadata": {"name": "pp"},
         "spec": {"agent": {"enabled": False}}},
        namespace=ns,
    )  # fmt: skip
    keys = [
        {"apiVersion": "putplace.io/v1alpha1", "kind": "ApiKey", "metadata": {"name": f"key-{n}"},
         "spec": {"instanceRef": {"name": "pp"}, "scopes": ["read"]}}
        for n in range(count)
    ]  # fmt: skip
    start = time.perf_counter()
    kube.apply(*keys, namespace=ns)

    def all_ready() -> bool:
        items = kube.get("apikeys", "-n", ns)["items"]
        return sum(condition(i, "Ready") == ("True", "KeyIssued") for i in items) == count

    wait_until(all_ready, 600, f"{count} ApiKeys Ready")
    return time.perf_counter() - start


def direct_keys(api: ApiProcess, count: int) -> float:
    with api.http() as c:
        start = time.perf_counter()
        for n in range(count):
            c.post("/api_keys", json={"name": f"direct-{n}", "scopes": ["read"]}).raise_for_status()
        return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with ExitStack() as stack:
        workdir = stack.enter_context(scratch("bench-operator"))
        kube = cluster(stack, workdir)
        kube.kubectl("apply", "-f", str(CRD_DIR))
        kube.kubectl("wait", "--for=condition=Established", *(f"crd/{n}" for n in CRD_NAMES), "--timeout=60s")
        api = ApiProcess(workdir / "api", env={"PUTPLACE_LOG_LEVEL": "warning"})
        api.workdir.mkdir()
        api.start()
        stack.callback(api.stop)
        operator = OperatorProcess(
            kube.kubeconfig,
            workdir,
            env={"PUTPLACE_OPERATOR_API_URL_TEMPLATE": api.url, "PUTPLACE_OPERATOR_LOG_LEVEL": "warning"},
        )
        operator.start()
        stack.callback(operator.stop)
        stack.callback(delete_namespaces, kube)
        assert operator.process is not None
        pid = operator.process.pid
        idle = int(proc_status(pid)["VmRSS"].split()[0]) / 1024

        instance = [instance_to_ready(kube) for _ in range(args.rounds)]
        bare = [bare_to_ready(kube) for _ in range(args.rounds)]
        keys_s = keys_to_ready(kube, args.keys)
        rss = peak_rss_mib(pid)
        direct_s = direct_keys(api, args.keys)

    inst, floor = statistics.median(instance), statistics.median(bare)
    rate, direct = args.keys / keys_s, args.keys / direct_s
    print(machine_line())
    print_table(
        ["measured", "value", "baseline (same run)", "ratio"],
        [
            ["instance apply -> Ready (median)", f"{inst:.2f} s", f"bare Deployment + DaemonSet {floor:.2f} s",
             f"{inst / floor:.2f}x"],
            [f"{args.keys} ApiKeys -> Ready", f"{keys_s:.1f} s = {rate:.1f} keys/s",
             f"POST /api_keys one by one {direct:.0f} keys/s", f"{rate / direct:.2f}"],
            ["operator peak RSS", f"{rss:.0f} MiB", f"the same process idle after start {idle:.0f} MiB",
             f"{rss / idle:.2f}x"],
        ],
    )  # fmt: skip
    met = rate >= 3.3 and rss < 256
    print(f"goal: >= 3.3 keys/s and peak RSS < 256 MiB (the operator's memory limit): {'met' if met else 'MISSED'}")
    figures = {"instance_ready_s": inst, "bare_ready_s": floor, "rounds": instance, "keys": args.keys}
    figures |= {"keys_s": keys_s, "keys_per_s": rate, "direct_keys_per_s": direct}
    print(json.dumps(figures | {"operator_peak_rss_mib": rss, "operator_idle_rss_mib": idle}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
