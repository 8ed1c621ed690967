"""A real Kubernetes control plane for the tests, like controller-runtime's envtest, plus kwok.

etcd, kube-apiserver, kube-controller-manager and kube-scheduler run as child processes on
127.0.0.1; kwok fakes the kubelets of a few nodes, so Deployment and DaemonSet pods get
scheduled and reported Running (no containers run anywhere). All five binaries are built from
the Go module proxy once and cached:

- etcd v3.6.8 (what kubeadm v1.36 deploys): ``go.etcd.io/etcd/server/v3`` (its own replaces do not matter in a throwaway
  module, all submodules are tagged).
- Kubernetes v1.36.4: ``k8s.io/kubernetes/cmd/...``; its go.mod requires the staging modules at
  ``v0.0.0`` and maps them to ``./staging/src/...``, so the throwaway module replaces each of them
  with its published ``v0.36.4``. Built with upstream's tags and version stamps.
- kwok v0.8.0 (``sigs.k8s.io/kwok/cmd/kwok``); its stage YAMLs (what kwok does to nodes and
  pods) are copied from the module source next to the binary.

``start()`` makes the PKI with the openssl command line (one CA, one admin cert that also
serves TLS and signs service-account tokens, as kwokctl does), writes an admin kubeconfig, starts
the five processes, and creates the fake nodes. Everything lives in one work dir.
"""

from __future__ import annotations

import base64
import datetime
import http.client
import json
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .base import (
    ENV_PREFIX,
    Process,
    Server,
    ServerError,
    bin_dir,
    free_ports,
    go_build,
    go_module_dir,
    progress,
    stop_all,
)

NAME = "kube"
KUBE_VERSION = "v1.36.4"
STAGING_VERSION = "v0.36.4"
ETCD_VERSION = "v3.6.8"  # what kubeadm v1.36 deploys: the kind nodes run the same etcd build
KWOK_VERSION = "v0.8.0"
VERSION = f"{KUBE_VERSION}+etcd-{ETCD_VERSION}+kwok-{KWOK_VERSION}"

ENV_KUBECONFIG = f"{ENV_PREFIX}KUBECONFIG"
ENV_SERVER = f"{ENV_PREFIX}KUBE_SERVER"

# Every staging module of k8s.io/kubernetes v1.36 (its go.mod: `k8s.io/X => ./staging/src/k8s.io/X`).
STAGING = (
    "api apiextensions-apiserver apimachinery apiserver cli-runtime client-go cloud-provider "
    "cluster-bootstrap code-generator component-base component-helpers controller-manager cri-api "
    "cri-client cri-streaming csi-translation-lib dynamic-resource-allocation endpointslice externaljwt "
    "kms kube-aggregator kube-controller-manager kube-proxy kube-scheduler kubectl kubelet metrics "
    "mount-utils pod-security-admission sample-apiserver sample-cli-plugin sample-controller streaming"
).split()
KUBE_BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
KUBE_TAGS = ("selinux", "notest", "grpcnotrace")  # what upstream release builds use

# kwok's stages (kustomize/stage/ in its module), the set kwokctl gives a kwok controller.
KWOK_STAGES = (
    "node/fast/node-initialize.yaml",
    "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "pod/fast/pod-ready.yaml",
    "pod/fast/pod-complete.yaml",
    "pod/fast/pod-delete.yaml",
)


def _etcd() -> Path:
    return bin_dir("etcd", ETCD_VERSION) / "etcd"


def _kube(binary: str) -> Path:
    return bin_dir("kubernetes", KUBE_VERSION) / binary


def _kwok() -> Path:
    return bin_dir("kwok", KWOK_VERSION) / "kwok"


def _stage_dir() -> Path:
    return bin_dir("kwok", KWOK_VERSION) / "stages"


def binaries() -> dict[str, Path]:
    return {
        "etcd": _etcd(),
        **{name: _kube(name) for name in KUBE_BINARIES},
        "kwok": _kwok(),
    }


def binary() -> Path:
    return _kube("kube-apiserver")


def _kube_ldflags() -> list[str]:
    minor = KUBE_VERSION.split(".")[1]
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    flags = []
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {package}.gitVersion={KUBE_VERSION}",
            f"-X {package}.gitMajor=1",
            f"-X {package}.gitMinor={minor}",
            f"-X {package}.gitTreeState=clean",
            f"-X {package}.buildDate={date}",
        ]
    return flags


def _copy_stages(build: Path, env: Mapping[str, str]) -> None:
    """Copy kwok's stage YAMLs from the module source into the bin dir, next to the binary."""
    source = go_module_dir(build, env, "sigs.k8s.io/kwok") / "kustomize" / "stage"
    target = _stage_dir()
    for stage in KWOK_STAGES:
        copied = target / stage
        copied.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / stage, copied)
        copied.chmod(0o644)


def install() -> Path:
    """Build etcd, the three Kubernetes control-plane binaries and kwok unless cached."""
    missing = [name for name, path in binaries().items() if not path.is_file()]
    if not missing:
        return binary()
    started = time.monotonic()
    progress(
        f"installing the Kubernetes control plane ({', '.join(missing)}): ~10 minutes on a cold "
        "Go cache with 2 cores, under a minute with warm Go caches"
    )
    go_build(
        name="etcd",
        version=ETCD_VERSION,
        module="go.etcd.io/etcd/server/v3",
        module_version=ETCD_VERSION,
        package="go.etcd.io/etcd/server/v3",
        binary="etcd",
        minutes="1-2",
    )
    go_build(
        name="kwok",
        version=KWOK_VERSION,
        module="sigs.k8s.io/kwok/cmd/kwok",
        module_version=KWOK_VERSION,
        package="sigs.k8s.io/kwok/cmd/kwok",
        binary="kwok",
        ldflags=[f"-X sigs.k8s.io/kwok/pkg/consts.Version={KWOK_VERSION}"],
        prepare=_copy_stages,
        minutes="2-3",
    )
    for name, minutes in zip(KUBE_BINARIES, ("3-6", "1-3", "< 1"), strict=True):
        build_kubernetes_binary(name, minutes=minutes)
    progress(f"Kubernetes control plane installed in {time.monotonic() - started:.0f} s")
    return binary()


def build_kubernetes_binary(name: str, *, minutes: str = "1-5") -> Path:
    """Build ``k8s.io/kubernetes/cmd/<name>`` at KUBE_VERSION (one build module for all of them)."""
    return go_build(
        name="kubernetes",
        version=KUBE_VERSION,
        module=f"k8s.io/kubernetes/cmd/{name}",
        module_version=KUBE_VERSION,
        package=f"k8s.io/kubernetes/cmd/{name}",
        binary=name,
        tags=KUBE_TAGS,
        ldflags=_kube_ldflags(),
        replace={f"k8s.io/{module}": f"k8s.io/{module}@{STAGING_VERSION}" for module in STAGING},
        minutes=minutes,
    )


# --------------------------------------------------------------------------- PKI and kubeconfig


def _openssl(*args: str, cwd: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise ServerError("the openssl command is needed to make the test cluster's certificates")
    result = subprocess.run(
        [openssl, *args], cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False
    )
    if result.returncode != 0:
        raise ServerError(f"`openssl {' '.join(args[:2])}` failed: {result.stderr.strip()}")


def make_pki(pki: Path) -> None:
    """A CA and one admin certificate (CN=admin, O=system:masters) signed by it, EC P-256.

    As kwokctl does, the admin certificate also serves the API (SAN 127.0.0.1 and localhost) and
    its key signs the service-account tokens (public half in sa.pub).
    """
    pki.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "3650",
        "-subj", "/CN=putplace-test-kube-ca",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        cwd=pki,
    )  # fmt: skip
    _openssl(
        "req", "-new", *ec, "-keyout", "admin.key", "-out", "admin.csr", "-subj", "/O=system:masters/CN=admin", cwd=pki
    )
    (pki / "admin.ext").write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
    )
    _openssl(
        "x509", "-req", "-in", "admin.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "3650", "-extfile", "admin.ext", "-out", "admin.crt",
        cwd=pki,
    )  # fmt: skip
    _openssl("pkey", "-in", "admin.key", "-pubout", "-out", "sa.pub", cwd=pki)
    for key in pki.glob("*.key"):
        key.chmod(0o600)


def write_kubeconfig(path: Path, server: str, pki: Path) -> None:
    """An admin kubeconfig with the certificates embedded (JSON, which is valid YAML)."""

    def data(name: str) -> str:
        return base64.b64encode((pki / name).read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": NAME, "cluster": {"server": server, "certificate-authority-data": data("ca.crt")}}],
        "users": [
            {
                "name": "admin",
                "user": {"client-certificate-data": data("admin.crt"), "client-key-data": data("admin.key")},
            }
        ],
        "contexts": [{"name": NAME, "context": {"cluster": NAME, "user": "admin", "namespace": "default"}}],
        "current-context": NAME,
        "preferences": {},
    }
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o600)


# --------------------------------------------------------------------------- API access


@dataclass
class _Api:
    """Just enough of an HTTPS client for start-up: readiness, node creation, node status."""

    server: str
    pki: Path
    context: ssl.SSLContext = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        self.context.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))

    def request(self, method: str, path: str, body: object = None, timeout: float = 5.0) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.server + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, context=self.context, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()
        except (OSError, http.client.HTTPException) as error:
            return 0, str(error).encode()

    def ok(self, path: str) -> bool:
        return self.request("GET", path)[0] == 200


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (OSError, ValueError, http.client.HTTPException):
        return False


def _https_ok(url: str) -> bool:
    """Healthz of kube-controller-manager / kube-scheduler (self-signed serving cert)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, context=context, timeout=2) as response:
            return bool(response.status == 200)
    except (OSError, ValueError, http.client.HTTPException):
        return False


# --------------------------------------------------------------------------- start


FAKE_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")


def fake_node(name: str) -> dict[str, object]:
    """A Node that kwok manages (no taint, so ordinary pods and DaemonSets land on it)."""
    key, value = FAKE_NODE_ANNOTATION
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {key: value, "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/role": "agent",
                "type": "kwok",
            },
        },
        "spec": {},
    }


def _schedulable(node: Mapping[str, Any]) -> bool:
    """Ready, and no taint that keeps ordinary pods away."""
    conditions = node.get("status", {}).get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    taints = node.get("spec", {}).get("taints") or []
    return ready and not any(t.get("effect") in ("NoSchedule", "NoExecute") for t in taints)


def start(
    workdir: Path,
    *,
    log_path: Path | None = None,
    timeout: float = 120.0,
    nodes: int = 2,
) -> Server:
    """Start etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok in ``workdir``.

    Returns once the API server is ready, the controller manager and scheduler answer healthz,
    and ``nodes`` fake nodes (``kwok-node-0``...) are Ready without taints. ``log_path`` names
    the summary log; each component logs next to it (``<stem>-<component>.log``).
    """
    install()
    deadline = time.monotonic() + timeout
    log_path = log_path or workdir / f"{NAME}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)

    def component_log(component: str) -> Path:
        path = log_path.with_name(f"{log_path.stem}-{component}.log")
        path.unlink(missing_ok=True)
        return path

    def remaining() -> float:
        return max(deadline - time.monotonic(), 1.0)

    started_at = time.monotonic()
    processes: list[Process] = []
    with log_path.open("a") as summary:
        pki = workdir / "pki"
        make_pki(pki)
        etcd_port, peer_port, api_port, kcm_port, scheduler_port = free_ports(5)
        server = f"https://127.0.0.1:{api_port}"
        kubeconfig = workdir / "admin.kubeconfig"
        write_kubeconfig(kubeconfig, server, pki)
        exes = binaries()

        def spawn(
            component: str,
            argv: list[str],
            check: Callable[[], bool],
            env: Mapping[str, str] | None = None,
            stop_grace: float = 10.0,
        ) -> Process:
            summary.write(f"{time.strftime('%H:%M:%S')} {component}: {' '.join(argv)}\n")
            summary.flush()
            process = Process.spawn(
                component, argv, cwd=workdir, log_path=component_log(component), env=env, stop_grace=stop_grace
            )
            processes.append(process)
            process.wait_ready(check, timeout=remaining())
            summary.write(f"{time.strftime('%H:%M:%S')} {component} ready (pid {process.pid})\n")
            summary.flush()
            return process

        try:
            etcd_url = f"http://127.0.0.1:{etcd_port}"
            peer_url = f"http://127.0.0.1:{peer_port}"
            spawn(
                "etcd",
                [
                    str(exes["etcd"]),
                    "--name=etcd0",
                    f"--data-dir={workdir / 'etcd'}",
                    f"--listen-client-urls={etcd_url}",
                    f"--advertise-client-urls={etcd_url}",
                    f"--listen-peer-urls={peer_url}",
                    f"--initial-advertise-peer-urls={peer_url}",
                    f"--initial-cluster=etcd0={peer_url}",
                    "--initial-cluster-state=new",
                    "--unsafe-no-fsync=true",
                    "--log-level=warn",
                ],
                lambda: _http_ok(f"{etcd_url}/health"),
            )
            api = _Api(server, pki)
            spawn(
                "apiserver",
                [
                    str(exes["kube-apiserver"]),
                    f"--etcd-servers={etcd_url}",
                    "--bind-address=127.0.0.1",
                    "--advertise-address=127.0.0.1",
                    f"--secure-port={api_port}",
                    f"--cert-dir={workdir / 'apiserver'}",
                    f"--tls-cert-file={pki / 'admin.crt'}",
                    f"--tls-private-key-file={pki / 'admin.key'}",
                    f"--client-ca-file={pki / 'ca.crt'}",
                    # No front proxy: a request-header CA only stops the controller manager and the
                    # scheduler from logging "missing content for CA bundle" errors; no cert has the name.
                    f"--requestheader-client-ca-file={pki / 'ca.crt'}",
                    "--requestheader-allowed-names=front-proxy-client",
                    "--authorization-mode=Node,RBAC",
                    "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                    f"--service-account-key-file={pki / 'sa.pub'}",
                    f"--service-account-signing-key-file={pki / 'admin.key'}",
                    "--service-cluster-ip-range=10.0.0.0/24",
                    "--allow-privileged=true",
                    "--disable-admission-plugins=ServiceAccount",
                    "--profiling=false",
                    # The `kubernetes` Service cannot point at 127.0.0.1 (loopback is refused every 10 s).
                    "--endpoint-reconciler-type=none",
                ],
                lambda: api.ok("/readyz") and api.ok("/api/v1/namespaces/default"),
                # With clients still watching, a graceful stop takes 60 s; its data is throwaway.
                stop_grace=5.0,
            )
            common = [
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                "--profiling=false",
            ]
            spawn(
                "controller-manager",
                [
                    str(exes["kube-controller-manager"]),
                    *common,
                    f"--secure-port={kcm_port}",
                    f"--cert-dir={workdir / 'controller-manager'}",
                    f"--service-account-private-key-file={pki / 'admin.key'}",
                    f"--root-ca-file={pki / 'ca.crt'}",
                    # else it creates /usr/libexec/kubernetes/kubelet-plugins/volume/exec/ on the host
                    f"--flex-volume-plugin-dir={workdir / 'controller-manager' / 'flexvolume'}",
                ],
                lambda: _https_ok(f"https://127.0.0.1:{kcm_port}/healthz"),
            )
            spawn(
                "scheduler",
                [
                    str(exes["kube-scheduler"]),
                    *common,
                    f"--secure-port={scheduler_port}",
                    f"--cert-dir={workdir / 'scheduler'}",
                ],
                lambda: _https_ok(f"https://127.0.0.1:{scheduler_port}/healthz"),
            )
            key, value = FAKE_NODE_ANNOTATION
            stages = [str(_stage_dir() / stage) for stage in KWOK_STAGES]
            kwok = spawn(
                "kwok",
                [
                    str(exes["kwok"]),
                    f"--kubeconfig={kubeconfig}",
                    "--manage-all-nodes=false",
                    f"--manage-nodes-with-annotation-selector={key}={value}",
                    "--manage-nodes-with-label-selector=",
                    "--manage-single-node=",
                    "--cidr=10.244.0.0/16",
                    "--node-ip=10.0.0.1",
                    "--node-lease-duration-seconds=40",
                    *[f"--config={stage}" for stage in stages],
                ],
                lambda: True,
                env={"HOME": str(workdir / "kwok-home")},  # kwok reads ~/.kwok/kwok.yaml if present
            )
            names = [f"kwok-node-{i}" for i in range(nodes)]
            for name in names:
                status, body = api.request("POST", "/api/v1/nodes", fake_node(name))
                if status not in (200, 201, 409):
                    raise ServerError(f"creating fake node {name}: HTTP {status}: {body[:300]!r}")

            def nodes_ready() -> bool:
                status, body = api.request("GET", "/api/v1/nodes")
                if status != 200:
                    return False
                ready = {n["metadata"]["name"] for n in json.loads(body)["items"] if _schedulable(n)}
                return ready >= set(names)

            kwok.wait_ready(nodes_ready, timeout=remaining())
        except BaseException:
            stop_all(processes)
            raise
        summary.write(f"{time.strftime('%H:%M:%S')} ready in {time.monotonic() - started_at:.1f} s\n")
    return Server(
        NAME,
        processes[0],
        workdir,
        {ENV_KUBECONFIG: str(kubeconfig), ENV_SERVER: server},
        extra=processes[1:],
    )


# --------------------------------------------------------------------------- what a test gets


@dataclass(frozen=True)
class KubeCluster:
    """A running control plane as a test sees it: its admin kubeconfig and API server URL."""

    kubeconfig: Path
    server: str

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> KubeCluster | None:
        """The cluster named by PUTPLACE_TEST_KUBECONFIG (+ _KUBE_SERVER), or None if unset."""
        kubeconfig = env.get(ENV_KUBECONFIG)
        if not kubeconfig:
            return None
        path = Path(kubeconfig)
        if not path.is_file():
            raise ServerError(f"{ENV_KUBECONFIG}={kubeconfig}: no such file (stale `python -m tests.servers env`?)")
        server = env.get(ENV_SERVER) or json.loads(path.read_text())["clusters"][0]["cluster"]["server"]
        return cls(path, server)

    def env(self) -> dict[str, str]:
        """Variables that point kubectl, the kubernetes client and kopf at this cluster."""
        return {"KUBECONFIG": str(self.kubeconfig)}

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster; with ``check``, a failure raises with its stderr."""
        kubectl = shutil.which("kubectl")
        if kubectl is None:
            raise ServerError("kubectl is not on PATH")
        result = subprocess.run(
            [kubectl, f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise ServerError(f"`kubectl {' '.join(args)}` failed (exit {result.returncode}): {result.stderr.strip()}")
        return result

    def apply(self, *manifests: Mapping[str, Any], namespace: str | None = None) -> str:
        """``kubectl apply`` the given objects (dicts); returns kubectl's output."""
        ns = [f"--namespace={namespace}"] if namespace else []
        document = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(manifests)})
        return self.kubectl("apply", *ns, "-f", "-", input=document).stdout

    def get(self, *args: str) -> Any:
        """``kubectl get ... -o json``, parsed."""
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def wait_established(self, *crds: str, timeout: float = 60.0) -> None:
        """Wait until each CRD (by name) is Established. Not ``kubectl wait --for=condition``:
        on a CRD created a moment ago, whose status has no conditions yet, it fails at once
        ("<nil> is of the type <nil>") instead of waiting."""
        deadline = time.monotonic() + timeout
        for name in crds:
            while True:
                conditions = self.get(f"crd/{name}").get("status", {}).get("conditions") or []
                if any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
                    break
                if time.monotonic() > deadline:
                    raise ServerError(f"CRD {name} not Established after {timeout:.0f} s: {conditions}")
                time.sleep(0.2)

    def token_kubeconfig(self, account: str, namespace: str, path: Path) -> Path:
        """A kubeconfig at ``path`` that authenticates as ServiceAccount ``namespace/account``
        (a token from the TokenRequest API, valid 6 h): what that account may do, and no more."""
        token = self.kubectl("create", "token", account, "-n", namespace, "--duration=6h").stdout.strip()
        cluster = json.loads(self.kubeconfig.read_text())["clusters"][0]
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [cluster],
            "users": [{"name": account, "user": {"token": token}}],
            "contexts": [{"name": account, "context": {"cluster": cluster["name"], "user": account}}],
            "current-context": account,
        }
        path.write_text(json.dumps(config))
        path.chmod(0o600)
        return path
