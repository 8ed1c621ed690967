"""PutPlace on a real cluster, the README's Kubernetes section step by step: the chart installs
the operator, an instance brings up the API and the agents, the agents catalogue the nodes'
real files, an ApiKey's Secret works and rotates, pods die without losing anything, and the
release upgrades and uninstalls cleanly.

The steps build on each other (one cluster, one release), so they run in file order; each one
asserts what its step promises. Every wait has a deadline generous enough for a loaded
2-core machine: a step that is merely slow passes, one that never converges fails.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import re
import secrets
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pytest_kind import KindCluster  # type: ignore[import-untyped]

from putplace_client import PutPlaceClient
from putplace_client.errors import RateLimited
from tests.e2e.conftest import EXAMPLES, PUBLISHED, ROOT, kubectl_json, node_exec, nodes
from tests.servers import images, kind
from tests.servers.base import free_ports
from tests.servers.docker import DockerEngine
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(1800)  # a cold run builds the node image and creates the cluster in the first test

SYSTEM = "putplace-system"  # the operator's namespace: restricted Pod Security
NS = "putplace"  # the instance's: privileged, since agents mount host paths (README)
RELEASE = "putplace"
WATCHED = "/var/log/putplace-e2e"  # under the minimal instance's agent path, /var/log
OPERATOR = "app.kubernetes.io/component=operator"
T = TypeVar("T")
POD_READY = 300.0  # seconds: a first start on a busy 2-core machine pulls nothing but is slow


def _run(*args: str, timeout: float = 600.0) -> str:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, f"`{' '.join(args[:4])}` failed: {result.stdout[-2000:]}{result.stderr[-2000:]}"
    return result.stdout


def _helm(helm: Path, cluster: KindCluster, *args: str) -> str:
    """helm against the cluster; a failure fails the test with helm's own words."""
    return _run(str(helm), "--kubeconfig", str(cluster.kubeconfig_path), *args)


def _ready_pods(cluster: KindCluster, namespace: str, selector: str) -> list[dict[str, Any]]:
    pods = kubectl_json(cluster, "get", "pods", "-n", namespace, "-l", selector)["items"]
    return [
        pod
        for pod in pods
        if pod["metadata"].get("deletionTimestamp") is None
        and any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))
    ]


def _create_namespace(cluster: KindCluster, name: str, level: str) -> None:
    cluster.kubectl("create", "namespace", name)
    cluster.kubectl("label", "namespace", name, f"pod-security.kubernetes.io/enforce={level}")


@pytest.fixture(scope="module")
def release(kind_cluster: KindCluster, helm: Path) -> Iterator[KindCluster]:
    """The chart installed as the README says, with the images built from this checkout."""
    for namespace, level in ((SYSTEM, "restricted"), (NS, "privileged")):
        _create_namespace(kind_cluster, namespace, level)
    repository, tag = PUBLISHED["operator"].rsplit(":", 1)
    _helm(
        helm, kind_cluster, "install", RELEASE, str(ROOT / "charts" / "putplace"), "-n", SYSTEM,
        "--set", f"operator.image.repository={repository}", "--set", f"operator.image.tag={tag}",
        "--set", "operator.reconcileSeconds=10", "--wait", "--timeout", f"{int(POD_READY)}s",
    )  # fmt: skip
    yield kind_cluster


class Api:
    """An instance's API through `kubectl port-forward svc/<instance>-api`, as the README does."""

    def __init__(self, cluster: KindCluster, log: Path, namespace: str = NS, service: str = "putplace-api") -> None:
        self.cluster = cluster
        self.namespace, self.service = namespace, service
        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = log
        self._forward: subprocess.Popen[bytes] | None = None

    def _start(self) -> None:
        self._forward = _kubectl_port_forward(
            self.cluster, self.namespace, f"svc/{self.service}", self.port, 80, self._log
        )

    def _answers(self) -> bool:
        try:
            return bool(asyncio.run(self._health()))
        except Exception:  # noqa: BLE001 - not yet forwarding
            return False

    async def _health(self) -> dict[str, Any]:
        async with PutPlaceClient(self.url, timeout=5) as client:
            return await client.health()

    def ensure(self) -> None:
        """(Re)start the port-forward until it reaches a ready API pod: one dies with its pod."""

        def forwarding() -> bool:
            if self._forward is None or self._forward.poll() is not None:
                self._start()
            return self._answers()

        wait_until(forwarding, timeout=POD_READY, what="the API through kubectl port-forward")

    def _run(self, key: str, work: Callable[[PutPlaceClient], Awaitable[T]]) -> T:
        """``work(client)``; a 429 (the example key allows 5/s) is waited out as it says."""

        async def go() -> T:
            async with PutPlaceClient(self.url, key, timeout=30) as client:
                while True:
                    try:
                        return await work(client)
                    except RateLimited as refused:
                        await asyncio.sleep(refused.retry_after or 1.0)

        return asyncio.run(go())

    def call(self, key: str, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._run(key, lambda client: getattr(client, method)(*args, **kwargs))

    def records(self, key: str, hostname: str, prefix: str) -> dict[str, str]:
        """path -> sha256 of the host's current records under ``prefix`` whose content the API
        holds: an agent announces a file, then uploads it, so a record comes before its content."""

        async def listing(client: PutPlaceClient) -> dict[str, str]:
            return {
                r.filepath: r.sha256
                async for r in client.iter_files(hostname=hostname, path_prefix=prefix)
                if r.has_file_content
            }

        return self._run(key, listing)

    def stop(self) -> None:
        if self._forward is not None and self._forward.poll() is None:
            self._forward.terminate()
            self._forward.wait(10)


@pytest.fixture(scope="module")
def api(release: KindCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    forward = Api(release, tmp_path_factory.mktemp("port-forward") / "port-forward.log")
    yield forward
    forward.stop()


def _secret_exists(cluster: KindCluster, name: str, namespace: str = NS) -> bool:
    return bool(cluster.kubectl("get", "secret", name, "-n", namespace, "--ignore-not-found", "-o", "name").strip())


def _secret_key(cluster: KindCluster, name: str, namespace: str = NS) -> str:
    data = kubectl_json(cluster, "get", "secret", name, "-n", namespace)["data"]
    return base64.b64decode(data["api-key"]).decode()


def _exec(
    cluster: KindCluster, namespace: str, target: str, *argv: str, container: str | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``argv`` run in ``target`` (a pod, or ``deploy/<name>``), whatever its exit status: stdout
    and stderr kept apart (``KindCluster.kubectl`` raises on failure and keeps stdout only)."""
    where = ["-c", container] if container else []
    return subprocess.run(
        [str(cluster.kubectl_path), "-n", namespace, "exec", target, *where, "--", *argv],
        env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig_path)}, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def _kubectl_port_forward(
    cluster: KindCluster, namespace: str, target: str, port: int, remote: int, log: Path
) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [str(cluster.kubectl_path), "--kubeconfig", str(cluster.kubeconfig_path), "-n", namespace,
             "port-forward", target, f"{port}:{remote}"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip


@contextlib.contextmanager
def _port_forward(cluster: KindCluster, namespace: str, target: str, remote: int, log: Path) -> Iterator[int]:
    """`kubectl port-forward` to ``target`` for the block; yields the local port (callers retry
    their first request: the tunnel to the pod opens with the first connection)."""
    (port,) = free_ports(1)
    forward = _kubectl_port_forward(cluster, namespace, target, port, remote, log)
    try:
        yield port
    finally:
        forward.terminate()
        forward.wait(10)


# --------------------------------------------------------------------------- 1. the chart


def test_helm_install_runs_the_operator_ready_under_restricted_pod_security(release: KindCluster) -> None:
    (pod,) = _ready_pods(release, SYSTEM, OPERATOR)
    namespace = kubectl_json(release, "get", "namespace", SYSTEM)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    (container,) = pod["spec"]["containers"]
    assert container["image"] == PUBLISHED["operator"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    (status,) = pod["status"]["containerStatuses"]
    assert status["ready"] and status["restartCount"] == 0, status
    # the process really runs as the image's user, on a root filesystem it cannot write
    name = pod["metadata"]["name"]
    probe = "import os; print(os.getuid()); open('/x', 'w')"
    result = _exec(release, SYSTEM, name, "python", "-c", probe, timeout=60)
    assert result.stdout.split() == ["65532"] and "Read-only file system" in result.stderr, result


# --------------------------------------------------------------------------- 2. an instance


def _schedulable(cluster: KindCluster) -> list[str]:
    """The nodes that take ordinary pods (kind taints its control-plane node NoSchedule, and the
    minimal instance's agents, like any pod without a toleration, stay off it)."""
    return [
        node["metadata"]["name"]
        for node in kubectl_json(cluster, "get", "nodes")["items"]
        if not any(t["effect"] in ("NoSchedule", "NoExecute") for t in node["spec"].get("taints", []))
    ]


def _instance_ready(cluster: KindCluster, namespace: str, name: str, agents: int) -> dict[str, Any] | None:
    """The PutPlaceInstance once its status says Ready with ``agents`` agents ready."""
    ppi = kubectl_json(cluster, "get", "ppi", name, "-n", namespace)
    status = ppi.get("status", {})
    conditions = {c["type"]: c["status"] for c in status.get("conditions", [])}
    return ppi if conditions.get("Ready") == "True" and status.get("agentsReady") == agents else None


def test_the_minimal_instance_becomes_ready_through_real_probes(release: KindCluster) -> None:
    release.kubectl("apply", "-n", NS, "-f", str(ROOT / "crds" / "examples" / "minimal.yaml"))
    count = len(_schedulable(release))
    assert count >= 1 and len(nodes(release)) == 2

    wait_until(
        partial(_instance_ready, release, NS, "putplace", count),
        timeout=POD_READY * 2,
        what="the PutPlaceInstance Ready with an agent on every node",
    )
    (pod,) = _ready_pods(release, NS, "app.kubernetes.io/component=api")
    (container,) = pod["spec"]["containers"]
    assert container["image"] == PUBLISHED["api"]
    assert container["readinessProbe"] and container["livenessProbe"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    table = release.kubectl("get", "ppi", "-n", NS).splitlines()
    header, row = table[0].split(), table[1].split()
    assert header[:5] == ["NAME", "READY", "ENDPOINT", "REPLICAS", "AGENTS"], table
    assert row[0] == "putplace" and row[1] == "True", table
    assert row[2].startswith("http://putplace-api."), table
    assert row[3] == "1" and row[4] == str(count), table


# --------------------------------------------------------------------------- 3. agents, 4. keys


def test_an_apikey_secret_works_against_the_api(release: KindCluster, api: Api) -> None:
    release.kubectl("apply", "-n", NS, "-f", str(ROOT / "crds" / "examples" / "apikey.yaml"))
    wait_until(lambda: _secret_exists(release, "ci-uploader-key"), timeout=120, what="the Secret ci-uploader-key")
    api.ensure()
    key = _secret_key(release, "ci-uploader-key")
    assert api.call(key, "stats").files >= 0


def test_agents_catalogue_each_nodes_real_files_and_follow_changes(
    release: KindCluster, api: Api, docker: DockerEngine
) -> None:
    api.ensure()
    key = _secret_key(release, "ci-uploader-key")
    names = _schedulable(release)
    agents = kubectl_json(release, "get", "pods", "-n", NS, "-l", "app.kubernetes.io/component=agent")["items"]
    assert sorted(pod["spec"]["nodeName"] for pod in agents) == sorted(names)  # one agent on each
    contents = {node: f"written into {node} at {uuid.uuid4()}\n".encode() for node in names}
    for node, content in contents.items():
        node_exec(docker, node, f"mkdir -p {WATCHED} && printf '%s' '{content.decode()}' > {WATCHED}/hello.txt")
    path = f"{WATCHED}/hello.txt"

    def catalogued(node: str, expected: str | None) -> bool:
        return api.records(key, node, WATCHED).get(path) == expected

    for node, content in contents.items():  # hostname is the node's name, the path the node's own
        sha = hashlib.sha256(content).hexdigest()
        wait_until(partial(catalogued, node, sha), timeout=60, what=f"{path} of {node}")
        assert api.call(key, "download", sha) == content
    first = names[0]
    node_exec(docker, first, f"echo changed >> {path}")
    changed = contents[first] + b"changed\n"
    wait_until(lambda: catalogued(first, hashlib.sha256(changed).hexdigest()), timeout=60, what="the change")
    node_exec(docker, first, f"rm {path}")
    wait_until(lambda: catalogued(first, None), timeout=60, what="the deletion")
    for other in names[1:]:  # the other nodes' files are untouched
        assert catalogued(other, hashlib.sha256(contents[other]).hexdigest())


def test_rotating_an_apikey_delivers_a_new_key_and_the_old_one_works_for_the_grace(
    release: KindCluster, api: Api
) -> None:
    api.ensure()
    old = _secret_key(release, "ci-uploader-key")
    release.kubectl("patch", "apikey", "ci-uploader", "-n", NS, "--type", "merge", "-p", '{"spec": {"rotation": 1}}')
    new = wait_until(
        lambda: k if (k := _secret_key(release, "ci-uploader-key")) != old else None, timeout=120, what="rotation"
    )
    assert api.call(new, "stats").files >= 0
    assert api.call(old, "stats").files >= 0  # within rotationGraceSeconds (1 h)


# --------------------------------------------------------------------------- 5. pods die


def test_an_api_pod_deleted_during_uploads_loses_nothing(release: KindCluster, api: Api, docker: DockerEngine) -> None:
    api.ensure()
    key = _secret_key(release, "ci-uploader-key")
    node = _schedulable(release)[-1]
    batch = f"{WATCHED}/batch-{uuid.uuid4().hex[:6]}"
    # 200 files of distinct content written while the API pod is deleted under the agent
    script = (
        f"mkdir -p {batch} && i=0; while [ $i -lt 200 ]; do "
        f"head -c $((1000 + i * 37)) /dev/urandom > {batch}/f$i; i=$((i + 1)); sleep 0.02; done"
    )
    writer = subprocess.Popen(
        ["docker", "exec", node, "sh", "-c", script], env={**os.environ, **docker.env()},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(1)
    (pod,) = _ready_pods(release, NS, "app.kubernetes.io/component=api")
    release.kubectl("delete", "pod", "-n", NS, pod["metadata"]["name"], "--wait=false")
    assert writer.wait(120) == 0
    on_disk = dict(
        line.split("  ", 1)[::-1] for line in node_exec(docker, node, f"cd {batch} && sha256sum f*").splitlines()
    )
    expected = {f"{batch}/{name.strip()}": sha for name, sha in on_disk.items()}
    assert len(expected) == 200
    api.ensure()

    def converged() -> bool:
        try:
            return api.records(key, node, batch) == expected
        except Exception:  # noqa: BLE001 - the forward died with the pod
            api.ensure()
            return False

    wait_until(converged, timeout=POD_READY, what="every file of the batch catalogued after the API pod died")
    admin = _secret_key(release, "putplace-admin-key")  # the CI key's 5/s would only slow this down
    for sha in set(expected.values()):  # nothing corrupt: each content downloads and re-hashes
        assert hashlib.sha256(api.call(admin, "download", sha)).hexdigest() == sha
    # The maintenance commands, as an operator runs them: in the API's container, with its
    # settings, beside the live server (README: Maintenance on a cluster).
    verify = _exec(release, NS, "deploy/putplace-api", "putplace-api", "verify", "--json", container="api")
    assert verify.returncode == 0, verify.stderr
    report = json.loads(verify.stdout)
    assert report["ok"] and report["checked"] >= len(set(expected.values())), report
    # The default grace (24h): nothing this young goes.
    gc = _exec(release, NS, "deploy/putplace-api", "putplace-api", "gc", "--delete", "--json", container="api")
    assert gc.returncode == 0, gc.stderr
    assert json.loads(gc.stdout)["collected"]["count"] == 0


def test_a_killed_operator_pod_comes_back_and_converges(release: KindCluster, api: Api) -> None:
    (pod,) = _ready_pods(release, SYSTEM, OPERATOR)
    release.kubectl("delete", "pod", "-n", SYSTEM, pod["metadata"]["name"], "--grace-period=0", "--force")
    wait_until(
        lambda: [p for p in _ready_pods(release, SYSTEM, OPERATOR)
                 if p["metadata"]["name"] != pod["metadata"]["name"]],
        timeout=POD_READY, what="a new operator pod Ready",
    )  # fmt: skip
    # it converges: a child deleted by hand comes back, a new ApiKey is served
    release.kubectl("delete", "configmap", "-n", NS, "-l", "app.kubernetes.io/instance=putplace", "--wait=true")
    spec = {"instanceRef": {"name": "putplace"}, "scopes": ["read"], "secretName": "after-restart-key"}
    key = {"apiVersion": "putplace.io/v1alpha1", "kind": "ApiKey", "metadata": {"name": "after-restart"}, "spec": spec}
    release.kubectl("apply", "-n", NS, "-f", "-", input=json.dumps(key))
    instance = "app.kubernetes.io/instance=putplace"
    wait_until(
        lambda: kubectl_json(release, "get", "configmap", "-n", NS, "-l", instance)["items"],
        timeout=120,
        what="the instance's ConfigMap put back",
    )
    api.ensure()
    wait_until(lambda: _secret_exists(release, "after-restart-key"), timeout=120, what="the new ApiKey's Secret")
    assert api.call(_secret_key(release, "after-restart-key"), "stats").files >= 1


# --------------------------------------------------------------------------- 6. production


STORAGE = "storage"  # production-backends.yaml's namespace (its header), restricted Pod Security
PROD = "putplace-prod"  # the production instance's: privileged, for its agents
PROD_WATCHED = "/var/log/putplace-e2e-prod"  # under production.yaml's agent path /var/log
BUCKET, PREFIX = "putplace-contents", "prod/"  # production.yaml's storage.s3


def test_the_production_example_runs_on_ferretdb_and_minio_pods(
    release: KindCluster, backend_images: dict[str, str], docker: DockerEngine, tmp_path: Path
) -> None:
    """production.yaml as its header says, on production-backends.yaml's FerretDB and MinIO:
    three API pods, agents on both nodes (the example tolerates the control plane), each node's
    files catalogued in FerretDB and their contents stored once in MinIO under the prefix."""
    password = secrets.token_hex(16)
    _create_namespace(release, STORAGE, "restricted")
    release.kubectl("create", "secret", "generic", "minio-root", "-n", STORAGE,
                    "--from-literal=user=putplace", f"--from-literal=password={password}")  # fmt: skip
    release.kubectl("apply", "-n", STORAGE, "-f", str(EXAMPLES / "production-backends.yaml"))
    _create_namespace(release, PROD, "privileged")
    release.kubectl("create", "secret", "generic", "putplace-mongodb", "-n", PROD,
                    "--from-literal=uri=mongodb://mongodb.storage.svc:27017/putplace")  # fmt: skip
    release.kubectl("create", "secret", "generic", "putplace-s3", "-n", PROD,
                    "--from-literal=accessKeyId=putplace", f"--from-literal=secretAccessKey={password}")  # fmt: skip
    release.kubectl("apply", "-n", PROD, "-f", str(EXAMPLES / "production.yaml"))
    for name, image in backend_images.items():  # the backends pass restricted Pod Security, as written
        selector = f"app.kubernetes.io/name={name}"
        (pod,) = wait_until(partial(_ready_pods, release, STORAGE, selector), timeout=POD_READY, what=name)
        assert pod["spec"]["containers"][0]["image"] == image
    everywhere = nodes(release)
    ppi = wait_until(
        partial(_instance_ready, release, PROD, "putplace-prod", len(everywhere)),
        timeout=POD_READY * 2,
        what="the production instance Ready with an agent on every node",
    )
    assert ppi["status"]["readyReplicas"] == 3
    apis = _ready_pods(release, PROD, "app.kubernetes.io/component=api")
    assert len(apis) == 3 and all(p["spec"]["containers"][0]["image"] == PUBLISHED["api"] for p in apis)

    contents = {node: f"notes of {node}, {uuid.uuid4()}\n".encode() for node in everywhere}
    for node, content in contents.items():
        node_exec(
            docker, node, f"mkdir -p {PROD_WATCHED} && printf '%s' '{content.decode()}' > {PROD_WATCHED}/notes.txt"
        )
    path = f"{PROD_WATCHED}/notes.txt"
    api = Api(release, tmp_path / "port-forward.log", namespace=PROD, service="putplace-prod-api")
    try:
        api.ensure()
        admin = _secret_key(release, "putplace-prod-admin-key", PROD)

        def catalogued(node: str, sha: str) -> bool:
            return api.records(admin, node, PROD_WATCHED).get(path) == sha

        for node, content in contents.items():
            sha = hashlib.sha256(content).hexdigest()
            wait_until(partial(catalogued, node, sha), timeout=120, what=f"{path} of {node}")
            assert api.call(admin, "download", sha) == content
    finally:
        api.stop()

    # where the example says: the records in FerretDB's database putplace, the contents in MinIO
    import boto3
    import pymongo

    with _port_forward(release, STORAGE, "svc/mongodb", 27017, tmp_path / "mongodb.log") as port:
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            f"mongodb://127.0.0.1:{port}/", directConnection=True, serverSelectionTimeoutMS=5000
        )

        def records() -> dict[str, str] | None:
            try:
                return {d["hostname"]: d["sha256"] for d in client["putplace"]["files"].find({"filepath": path})}
            except pymongo.errors.PyMongoError:  # the tunnel opening
                return None

        try:
            found = wait_until(records, timeout=60, what="FerretDB through kubectl port-forward")
            # A small content uploaded in a batch lies in a pack: where, its content record says.
            places = {
                d["_id"]: (d.get("pack_id"), d.get("pack_offset"), d["size"])
                for d in client["putplace"]["contents"].find({"_id": {"$in": list(found.values())}})
            }
        finally:
            client.close()
    assert found == {node: hashlib.sha256(content).hexdigest() for node, content in contents.items()}
    with _port_forward(release, STORAGE, "svc/minio", 9000, tmp_path / "minio.log") as port:
        s3 = boto3.client(
            "s3", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id="putplace",
            aws_secret_access_key=password, region_name="us-east-1",
        )  # fmt: skip

        def stored(sha: str) -> bytes | None:
            pack_id, offset, size = places[sha]
            where = {"Key": f"{PREFIX}{sha[:2]}/{sha}"}
            if pack_id is not None:
                where = {"Key": f"{PREFIX}packs/{pack_id}", "Range": f"bytes={offset}-{offset + size - 1}"}
            try:
                return bytes(s3.get_object(Bucket=BUCKET, **where)["Body"].read())
            except Exception:  # noqa: BLE001 - the tunnel opening, or not there (yet)
                return None

        for content in contents.values():
            sha = hashlib.sha256(content).hexdigest()
            assert wait_until(partial(stored, sha), timeout=60, what=f"{sha} in MinIO") == content


# --------------------------------------------------------------------------- 7. upgrade, uninstall


def test_helm_upgrade_rolls_the_operator(release: KindCluster, helm: Path) -> None:
    (before,) = _ready_pods(release, SYSTEM, OPERATOR)
    repository, tag = PUBLISHED["operator"].rsplit(":", 1)
    _helm(
        helm, release, "upgrade", RELEASE, str(ROOT / "charts" / "putplace"), "-n", SYSTEM, "--reuse-values",
        "--set", "operator.logLevel=debug", "--wait", "--timeout", f"{int(POD_READY)}s",
    )  # fmt: skip
    (after,) = wait_until(
        lambda: [
            p for p in _ready_pods(release, SYSTEM, OPERATOR) if p["metadata"]["uid"] != before["metadata"]["uid"]
        ],
        timeout=POD_READY,
        what="the upgraded operator pod Ready",
    )
    env = {e["name"]: e.get("value") for e in after["spec"]["containers"][0].get("env", [])}
    assert env.get("PUTPLACE_OPERATOR_LOG_LEVEL", "").lower() == "debug", env
    assert after["spec"]["containers"][0]["image"] == f"{repository}:{tag}"


def test_helm_uninstall_lets_every_instance_and_key_go_and_leaves_nothing_stuck(
    release: KindCluster, helm: Path
) -> None:
    assert kubectl_json(release, "get", "apikeys", "-n", NS)["items"]  # there is something to let go
    _helm(helm, release, "uninstall", RELEASE, "-n", SYSTEM, "--wait", "--timeout", f"{int(POD_READY)}s")
    for resource in ("putplaceinstances", "apikeys", "webhooksubscriptions"):
        assert kubectl_json(release, "get", resource, "-A")["items"] == [], resource
    # nothing the operator made is left in the instance's namespace, nothing of the release in its own
    for namespace in (NS, PROD):
        wait_until(
            lambda: not kubectl_json(release, "get", "deployments,daemonsets,services,secrets", "-n", namespace,  # noqa: B023
                                     "-l", "app.kubernetes.io/managed-by=putplace-operator")["items"],
            timeout=POD_READY, what=f"the children of the instance in {namespace} gone",
        )  # fmt: skip

    def left_in_system() -> list[str]:
        found = kubectl_json(release, "get", "all,serviceaccounts,roles,rolebindings,jobs", "-n", SYSTEM)["items"]
        return [f"{o['kind']}/{o['metadata']['name']}" for o in found if o["metadata"]["name"] != "default"]

    # the operator's pod is the last to go, after its grace period
    wait_until(lambda: not left_in_system(), timeout=POD_READY, what=f"nothing left in {SYSTEM}")
    bindings = kubectl_json(
        release, "get", "clusterroles,clusterrolebindings", "-l", f"app.kubernetes.io/instance={RELEASE}"
    )
    assert bindings["items"] == []


# --------------------------------------------------------------------------- 8. skaffold


@pytest.fixture
def engine_as_found(docker: DockerEngine) -> Iterator[None]:
    """Take out of the engine what the test adds: skaffold builds through the engine's API,
    which keeps every intermediate container (about ten a build), and tags each build by commit,
    so the cached data root would grow with every run."""

    def containers() -> set[str]:
        return set(docker.docker("ps", "--all", "--quiet", "--no-trunc").stdout.split())

    def refs() -> set[str]:
        listed = docker.docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
        return {ref for ref in listed if "<none>" not in ref}

    containers_before, refs_before = containers(), refs()
    yield
    if added := containers() - containers_before:
        docker.docker("rm", "--force", *added, check=False)
    if added := refs() - refs_before:
        docker.docker("image", "rm", *added, check=False)
    images.prune_dangling(docker)


@pytest.mark.usefixtures("engine_as_found")
def test_skaffold_builds_the_images_and_runs_the_chart_on_kind(
    release: KindCluster, skaffold: Path, helm: Path, docker: DockerEngine, tmp_path: Path
) -> None:
    """The project's skaffold.yaml, as the README's `skaffold dev` uses it, on a cluster the
    release has left: `skaffold build` builds the three targets, `skaffold run` loads them into
    the nodes (the kind profile, on by itself for the kind-* context) and installs the chart with
    an instance that runs them, `skaffold delete` takes it all away again."""
    # No registry here: the Dockerfile's default base is the tests' Debian Python under that name.
    (base,) = re.findall(r"^ARG PYTHON=(\S+)$", (ROOT / "Dockerfile").read_text(), re.M)
    docker.docker("tag", images.python_image(docker), base)
    # As on a cluster skaffold meets first: its release namespace does not exist yet.
    release.kubectl("delete", "namespace", SYSTEM, "--ignore-not-found", "--wait=true")
    tools = [kind.binary(), Path(release.kubectl_path), helm]
    env = {
        **os.environ, **docker.env(), "KUBECONFIG": str(release.kubeconfig_path),
        "PATH": os.pathsep.join([*(str(t.parent) for t in tools), os.environ["PATH"]]),
        "SKAFFOLD_UPDATE_CHECK": "false", "SKAFFOLD_INTERACTIVE": "false",
        "SKAFFOLD_CACHE_FILE": str(tmp_path / "skaffold-cache"),  # not the user's ~/.skaffold
    }  # fmt: skip

    def run(*args: str) -> str:
        done = subprocess.run(
            [str(skaffold), *args],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200, check=False,
        )  # fmt: skip
        assert done.returncode == 0, f"skaffold {args[0]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done.stdout + done.stderr

    built_file = tmp_path / "build.json"
    run("build", "--file-output", str(built_file))
    built = {b["imageName"]: b["tag"] for b in json.loads(built_file.read_text())["builds"]}
    assert sorted(built) == sorted(ref.rsplit(":", 1)[0] for ref in PUBLISHED.values()), built
    for tag in built.values():  # the engine holds each, as the Dockerfile's non-root user
        assert docker.docker("image", "inspect", "--format", "{{.Config.User}}", tag).stdout.strip() == "65532:65532"

    # `run` finds each artifact in skaffold's cache (same inputs, same tag), so it builds nothing
    # again; the kind profile loads the images into the nodes, and the pods run only if it did.
    run("run", "--status-check=true")
    repository = {target: ref.rsplit(":", 1)[0] for target, ref in PUBLISHED.items()}
    (operator,) = wait_until(partial(_ready_pods, release, SYSTEM, OPERATOR), timeout=POD_READY, what="the operator")
    assert operator["spec"]["containers"][0]["image"] == built[repository["operator"]]
    everywhere = len(_schedulable(release))  # the chart's instance: the empty spec, agents off the control plane
    wait_until(
        partial(_instance_ready, release, SYSTEM, "putplace", everywhere),
        timeout=POD_READY * 2,
        what="skaffold's instance Ready with an agent on every node",
    )
    for component, target in (("api", "api"), ("agent", "agent")):
        pods = _ready_pods(release, SYSTEM, f"app.kubernetes.io/component={component}")
        assert pods and all(p["spec"]["containers"][0]["image"] == built[repository[target]] for p in pods), pods

    run("delete")
    wait_until(
        lambda: not kubectl_json(release, "get", "deployments,daemonsets", "-n", SYSTEM)["items"],
        timeout=POD_READY,
        what="skaffold delete to leave nothing",
    )
