"""The three images, built from the project's Dockerfile and run on a real Docker engine as
Kubernetes would run them: the API and the agent exactly as the operator's manifests describe
their containers (user, capabilities, read-only root, each volume mount, arguments, env), the
operator as the chart's Deployment does. Each one does its job: the API serves and stores a file
through the two-phase protocol, the agent syncs a mounted host tree into it, the operator
reconciles against a real control plane and answers ``/healthz``.

What a pod would get from Kubernetes is stood in for by the engine: an ``emptyDir`` is a tmpfs, a
``hostPath`` or a Secret volume a bind mount, the Service's DNS name the API container's address.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from putplace_client import PutPlaceClient
from putplace_client.models import FileMetadata
from putplace_operator.manifests import agent as agent_manifests
from putplace_operator.manifests import api as api_manifests
from putplace_operator.manifests.common import API_PORT, Instance
from tests.servers import DockerEngine, KubeCluster
from tests.servers.base import free_ports
from tests.waiting import wait_until

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
HOST_PATH = "/srv/shared"  # the node directory the agent is given (the instance's agent.hostPaths)
NODE = "node-a"
CAP_DAC_READ_SEARCH = 1 << 2


def run_flags(pod: Mapping[str, Any], container: Mapping[str, Any], sources: Mapping[str, Path]) -> list[str]:
    """``docker run`` flags for one container of a pod spec, as a kubelet applies them: its user,
    capabilities, read-only root and no privilege escalation, and every volume mount (an
    emptyDir becomes a tmpfs; any other volume is bound from ``sources[name]``)."""
    pod_security, security = pod.get("securityContext", {}), container.get("securityContext", {})
    uid = security.get("runAsUser", pod_security.get("runAsUser"))
    gid = security.get("runAsGroup", pod_security.get("runAsGroup", 0))
    flags = [] if uid is None else ["--user", f"{uid}:{gid}"]
    if "fsGroup" in pod_security:
        flags += ["--group-add", str(pod_security["fsGroup"])]
    if security.get("readOnlyRootFilesystem"):
        flags.append("--read-only")
    if security.get("allowPrivilegeEscalation") is False:
        flags += ["--security-opt", "no-new-privileges"]
    flags += [f"--cap-drop={cap}" for cap in security.get("capabilities", {}).get("drop", [])]
    flags += [f"--cap-add={cap}" for cap in security.get("capabilities", {}).get("add", [])]
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        if "emptyDir" in volumes[mount["name"]]:
            flags += ["--tmpfs", f"{mount['mountPath']}:rw,exec,nosuid,nodev,mode=1777"]
        else:
            read_only = ",readonly" if mount.get("readOnly") else ""
            flags += ["--mount", f"type=bind,source={sources[mount['name']]},target={mount['mountPath']}{read_only}"]
    return flags


def env_flags(container: Mapping[str, Any], resolved: Mapping[str, str]) -> list[str]:
    """``-e`` flags for a container's env: literal values as given, ``valueFrom`` from ``resolved``."""
    flags = []
    for item in container.get("env", []):
        value = item["value"] if "value" in item else resolved[item["name"]]
        flags += ["-e", f"{item['name']}={value}"]
    return flags


def process_status(docker: DockerEngine, name: str) -> dict[str, str]:
    """``/proc/1/status`` of a container's main process, as fields."""
    text = docker.docker("exec", name, "cat", "/proc/1/status").stdout
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def uid_of(status: Mapping[str, str]) -> int:
    return int(status["Uid"].split()[0])  # real uid (effective, saved and fs follow)


def logs(docker: DockerEngine, name: str) -> str:
    result = docker.docker("logs", "--tail", "30", name, check=False)
    return (result.stdout + result.stderr)[-3000:]


def remove(docker: DockerEngine, name: str) -> None:
    docker.docker("rm", "--force", name, check=False)


def instance() -> Instance:
    spec = {"agent": {"hostPaths": [HOST_PATH], "rescanIntervalSeconds": 60}}
    return Instance("pp", "default", str(uuid.uuid4()), spec)


class ApiContainer:
    """The API image running as the operator's Deployment runs it (SQLite, local storage)."""

    def __init__(self, docker: DockerEngine, image: str, workdir: Path) -> None:
        self.docker, self.name = docker, f"putplace-test-api-{secrets.token_hex(4)}"
        self.admin_key = "pp_admin_" + secrets.token_hex(16)
        i = instance()
        deployment = api_manifests.deployment(i)
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        # The SQLite and content claims: directories the pod's fsGroup (65532) can write.
        sources = {}
        for claim in ("db", "content"):
            sources[claim] = workdir / claim
            sources[claim].mkdir(parents=True)
            shutil.chown(sources[claim], 65532, 65532)
        flags = run_flags(pod, container, sources)
        flags += env_flags(container, {"PUTPLACE_ADMIN_KEY": self.admin_key})
        flags += [arg for key, value in api_manifests.settings(i).items() for arg in ("-e", f"{key}={value}")]
        flags += ["-p", f"127.0.0.1::{API_PORT}"]
        docker.docker("run", "--detach", "--name", self.name, *flags, image, *container["args"])
        port = docker.docker("port", self.name, f"{API_PORT}/tcp").stdout.split()[0].rsplit(":", 1)[1]
        self.url = f"http://127.0.0.1:{port}"
        inspected = json.loads(docker.docker("inspect", self.name).stdout)[0]
        self.address = inspected["NetworkSettings"]["IPAddress"]

    def wait_healthy(self) -> None:
        try:
            wait_until(self.healthy, timeout=60, what="the API container's /health")
        except AssertionError as error:
            raise AssertionError(f"{error}\n{logs(self.docker, self.name)}") from None

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=2).json().get("status") == "healthy"
        except (httpx.HTTPError, ValueError):
            return False


@pytest.fixture(scope="module")
def api_container(
    docker: DockerEngine, putplace_images: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiContainer]:
    api = ApiContainer(docker, putplace_images["api"], tmp_path_factory.mktemp("api-container"))
    try:
        api.wait_healthy()
        yield api
    finally:
        remove(docker, api.name)


def metadata_of(path: str, data: bytes) -> FileMetadata:
    return FileMetadata(
        filepath=path,
        hostname="image-test",
        ip_address="127.0.0.1",
        sha256=hashlib.sha256(data).hexdigest(),
        file_size=len(data),
        file_mode=0o100644,
        file_uid=0,
        file_gid=0,
        file_mtime=1.7e9,
        file_atime=1.7e9,
        file_ctime=1.7e9,
    )


async def test_the_api_image_serves_and_stores_as_uid_65532_on_a_read_only_root(
    api_container: ApiContainer,
) -> None:
    status = process_status(api_container.docker, api_container.name)
    assert uid_of(status) == 65532
    assert int(status["CapEff"], 16) == 0  # every capability dropped
    touched = api_container.docker.docker("exec", api_container.name, "touch", "/x", check=False)
    assert touched.returncode != 0 and "Read-only file system" in touched.stderr
    data = b"stored through the two-phase protocol " + secrets.token_bytes(16)
    meta = metadata_of(f"/images/{secrets.token_hex(4)}", data)
    async with PutPlaceClient(api_container.url, api_container.admin_key) as client:
        assert (await client.health())["status"] == "healthy"
        announced = await client.put_file(meta)
        assert announced.upload_required
        await client.upload(meta.sha256, data, hostname=meta.hostname, filepath=meta.filepath)
        assert await client.download(meta.sha256) == data
        assert (await client.get_file(meta.sha256)).filepath == meta.filepath
        again = await client.put_file(meta)
        assert not again.upload_required  # the content is there: stored once


async def test_the_agent_image_syncs_a_mounted_host_tree_as_the_daemonset_runs_it(
    docker: DockerEngine, putplace_images: dict[str, str], api_container: ApiContainer, tmp_path: Path
) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    files = {
        "a.txt": b"alpha\n",
        "sub/b.bin": secrets.token_bytes(70_000),
        "private.key": b"only its owner may read this\n",  # read with CAP_DAC_READ_SEARCH alone
    }
    for relative, data in files.items():
        (tree / relative).write_bytes(data)
    private = tree / "private.key"
    private.chmod(0o600)
    shutil.chown(private, 1234, 1234)
    async with PutPlaceClient(api_container.url, api_container.admin_key) as client:
        key = await client.create_key(name=f"agent-{secrets.token_hex(4)}", scopes=["write"])
    secret = tmp_path / "api-key"
    secret.mkdir()
    (secret / "api-key").write_text(key.api_key)
    state = tmp_path / "state"
    state.mkdir()

    i = instance()
    daemon_set = agent_manifests.daemon_set(i)
    assert daemon_set is not None
    pod = daemon_set["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    flags = run_flags(pod, container, {"host-0": tree, "state": state, "api-key": secret})
    flags += env_flags(container, {"NODE_NAME": NODE, "NODE_IP": "10.0.0.7"})
    args = list(container["args"])
    args[args.index("--server") + 1] = f"http://{api_container.address}:{API_PORT}"  # the Service
    name = f"putplace-test-agent-{secrets.token_hex(4)}"
    docker.docker("run", "--detach", "--name", name, *flags, putplace_images["agent"], *args)
    try:
        status = process_status(docker, name)
        assert uid_of(status) == 0 and int(status["CapEff"], 16) == CAP_DAC_READ_SEARCH

        async def catalogued() -> dict[str, str]:
            async with PutPlaceClient(api_container.url, api_container.admin_key) as client:
                page = await client.list_files(hostname=NODE, path_prefix=HOST_PATH, limit=100)
            return {record.filepath: record.sha256 for record in page.items if record.has_file_content}

        wanted = {f"{HOST_PATH}/{relative}": hashlib.sha256(data).hexdigest() for relative, data in files.items()}
        got: dict[str, str] = {}
        for _ in range(120):
            got = await catalogued()
            if got == wanted:
                break
            await anyio.sleep(0.5)
        assert got == wanted, logs(docker, name)
        async with PutPlaceClient(api_container.url, api_container.admin_key) as client:
            assert await client.download(wanted[f"{HOST_PATH}/sub/b.bin"]) == files["sub/b.bin"]
        assert any(state.iterdir()), "the agent keeps its index in the hostPath state dir"
        stopped = docker.docker("stop", "--time", "30", name).returncode
        code = docker.docker("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
        assert stopped == 0 and code == "0", logs(docker, name)  # SIGTERM: drained, exit 0
    finally:
        remove(docker, name)


def test_the_operator_image_reconciles_and_answers_healthz_as_the_chart_runs_it(
    docker: DockerEngine, putplace_images: dict[str, str], kube: KubeCluster, tmp_path: Path
) -> None:
    kube.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
    kubeconfig = tmp_path / "kubeconfig"
    shutil.copyfile(kube.kubeconfig, kubeconfig)
    kubeconfig.chmod(0o644)  # the chart's pod reads a token as uid 65532; this stands in for it
    liveness, metrics = free_ports(2)
    # The chart's operator Deployment (charts/putplace/templates/operator-deployment.yaml).
    pod = {
        "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532},
        "volumes": [{"name": "tmp", "emptyDir": {}}, {"name": "kubeconfig", "secret": {}}],
    }
    container = {
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "kubeconfig", "mountPath": "/etc/kubeconfig", "readOnly": True},
        ],
    }
    namespace = f"images-{secrets.token_hex(3)}"
    kube.kubectl("create", "namespace", namespace)
    flags = run_flags(pod, container, {"kubeconfig": kubeconfig})
    flags += ["--network", "host", "-e", "KUBECONFIG=/etc/kubeconfig"]  # the control plane is on 127.0.0.1
    for key, value in {
        "NAMESPACES": namespace,
        "LIVENESS_PORT": str(liveness),
        "METRICS_PORT": str(metrics),
        "LOG_LEVEL": "INFO",
    }.items():
        flags += ["-e", f"PUTPLACE_OPERATOR_{key}={value}"]
    name = f"putplace-test-operator-{secrets.token_hex(4)}"
    docker.docker("run", "--detach", "--name", name, *flags, putplace_images["operator"], "putplace-operator")
    try:
        assert uid_of(process_status(docker, name)) == 65532

        def healthz() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{liveness}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        try:
            wait_until(healthz, timeout=60, what="the operator container's /healthz")
            # It reconciles for real: an instance gets its API Deployment from the container.
            kube.apply(
                {
                    "apiVersion": "putplace.io/v1alpha1",
                    "kind": "PutPlaceInstance",
                    "metadata": {"name": "pp", "namespace": namespace},
                    "spec": {"agent": {"enabled": False}},
                }
            )
            wait_until(
                lambda: kube.kubectl("get", "deployment", "pp-api", "-n", namespace, check=False).returncode == 0,
                timeout=60,
                what="the operator container to create the instance's API Deployment",
            )
        except AssertionError as error:
            raise AssertionError(f"{error}\n{logs(docker, name)}") from None
        assert httpx.get(f"http://127.0.0.1:{metrics}/metrics", timeout=5).status_code == 200
    finally:
        remove(docker, name)
        kube.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
