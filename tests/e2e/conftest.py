"""Fixtures of the end-to-end suite: PutPlace on a real kind cluster, as its users run it.

``kind_cluster`` is pytest-kind's own ``KindCluster`` (the fixture pytest-kind ships, same
name and shape), pointed at the kind CLI, kubectl and node image built here (tests/servers/kind.py)
and at the tests' Docker engine. The cluster has a control-plane node and a worker; the
project's three images, built from its Dockerfile, are loaded into both under the names the
chart and the operator use, so `helm install` and `kubectl apply` run unchanged.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]
from pytest_kind import KindCluster  # type: ignore[import-untyped]

from tests.servers import ferretdb, images, kind, minio
from tests.servers.docker import DockerEngine

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "crds" / "examples"
CLUSTER_NAME = "putplace-e2e"
APP_VERSION = yaml.safe_load((ROOT / "charts" / "putplace" / "Chart.yaml").read_text())["appVersion"]
# What the chart and the operator run by default (tests/test_images.py pins these names).
PUBLISHED = {target: f"ghcr.io/putplace/putplace-{target}:{APP_VERSION}" for target in images.TARGETS}

# kind on a cgroup v1 host (this machine's): kubelet >= 1.35 refuses v1 unless told otherwise.
CLUSTER_CONFIG = {
    "kind": "Cluster",
    "apiVersion": "kind.x-k8s.io/v1alpha4",
    "nodes": [{"role": "control-plane"}, {"role": "worker"}],
    "kubeadmConfigPatches": ["kind: KubeletConfiguration\nfailCgroupV1: false\n"],
}


@pytest.fixture(scope="session")
def kind_cluster(
    docker: DockerEngine,
    putplace_images: dict[str, str],
    kind_node_image: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[KindCluster]:
    """A two-node kind cluster with the project's images loaded; deleted at the end."""
    for target, ref in putplace_images.items():
        docker.docker("tag", ref, PUBLISHED[target])
    work = tmp_path_factory.mktemp("kind")
    config = work / "cluster.yaml"
    config.write_text(yaml.safe_dump(CLUSTER_CONFIG))
    cluster = KindCluster(
        CLUSTER_NAME,
        kubeconfig=work / "kubeconfig",
        image=kind_node_image,
        kind_path=kind.binary(),
        kubectl_path=kind.node_binary("kubectl"),
    )
    with pytest.MonkeyPatch.context() as env:  # pytest-kind runs kind and kubectl with our environment
        for name, value in docker.env().items():
            env.setenv(name, value)
        cluster.delete()  # a cluster left by an interrupted run
        cluster.create(config)
        try:
            for ref in PUBLISHED.values():
                cluster.load_docker_image(ref)
            yield cluster
        finally:
            cluster.delete()


def example_images(example: Path) -> dict[str, str]:
    """Deployment name -> its container's image, in an example file."""
    return {
        doc["metadata"]["name"]: doc["spec"]["template"]["spec"]["containers"][0]["image"]
        for doc in yaml.safe_load_all(example.read_text())
        if doc["kind"] == "Deployment"
    }


@pytest.fixture(scope="session")
def backend_images(kind_cluster: KindCluster, docker: DockerEngine) -> dict[str, str]:
    """The FerretDB and MinIO images production-backends.yaml names, loaded into the nodes.

    Their public images cannot be pulled here: each is the tests' own build of that server
    (tests/servers/ferretdb.py, minio.py) on the Debian base, at the path the public image has
    it, under the public name, so the example applies unchanged."""
    named = example_images(EXAMPLES / "production-backends.yaml")
    debian = images.debian_image(docker)
    servers = {
        "ferretdb": (ferretdb.install(), "/ferretdb", '\nENTRYPOINT ["/ferretdb"]'),
        "minio": (minio.install(), "/usr/bin/minio", ""),
    }
    for name, (binary, path, entrypoint) in servers.items():
        dockerfile = f"FROM {debian}\n{kind.PATH_ENV}COPY {binary.name} {path}{entrypoint}\n"
        kind.build_image(docker, [named[name]], dockerfile, {binary.name: binary})
        kind_cluster.load_docker_image(named[name])
    return named


def kubectl_json(cluster: KindCluster, *args: str) -> Any:
    return json.loads(cluster.kubectl(*args, "-o", "json"))


def node_exec(docker: DockerEngine, node: str, script: str) -> str:
    """Run a shell script in a kind node (a container of our engine)."""
    return docker.docker("exec", node, "sh", "-c", script).stdout


def nodes(cluster: KindCluster) -> list[str]:
    return subprocess.run(
        [str(kind.binary()), "get", "nodes", "--name", cluster.name], capture_output=True, text=True, check=True
    ).stdout.split()
