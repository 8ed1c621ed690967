"""HTTPS between the agent and the API: the API serves TLS from ``PUTPLACE_TLS_CERTFILE`` /
``PUTPLACE_TLS_KEYFILE`` (one worker or several), the agent trusts it through ``--ca-bundle``.
Real handshakes on 127.0.0.1 with a throwaway CA made by trustme; no verification is turned off."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trustme

from tests.agent.conftest import Agent, ApiProcess
from tests.agent.test_cli import one_line_error
from tests.api.conftest import ADMIN_KEY
from tests.processes import api_factory


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA certificate: what a client trusts
    cert: Path  # the server's certificate chain
    key: Path  # the server's private key

    def server_env(self) -> dict[str, str]:
        return {"PUTPLACE_TLS_CERTFILE": str(self.cert), "PUTPLACE_TLS_KEYFILE": str(self.key)}


def make_pki(directory: Path) -> Pki:
    directory.mkdir()
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    pki = Pki(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    ca.cert_pem.write_to_path(str(pki.ca))
    server.private_key_pem.write_to_path(str(pki.key))
    for i, pem in enumerate(server.cert_chain_pems):
        pem.write_to_path(str(pki.cert), append=i > 0)
    return pki


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def start_https_api(pki: Pki, tmp_path: Path) -> Iterator[Callable[[int], ApiProcess]]:
    (tmp_path / "tmp").mkdir()
    env = {**pki.server_env(), "TMPDIR": str(tmp_path / "tmp")}  # where the workers' metrics dir goes
    with api_factory(tmp_path) as start:
        yield lambda workers: start(env={**env, "PUTPLACE_WORKERS": str(workers)}, ca_bundle=pki.ca)


@pytest.fixture
def https_api(start_https_api: Callable[[int], ApiProcess]) -> ApiProcess:
    return start_https_api(1)


@pytest.mark.parametrize("workers", [1, 2])
def test_the_agent_syncs_over_https_with_the_ca_bundle(
    start_https_api: Callable[[int], ApiProcess], workers: int, pki: Pki, tree: Path
) -> None:
    https_api = start_https_api(workers)
    files = {tree / "a.txt": b"alpha\n", tree / "b.bin": os.urandom(300_000)}  # bundled, and streamed
    for path, data in files.items():
        path.write_bytes(data)
    agent = Agent(https_api, tree, tree.parent, node="tls", extra=["--ca-bundle", str(pki.ca)])

    code, summary = agent.once(timeout=120)

    assert code == 0, agent.log_path.read_text()[-2000:]
    assert https_api.catalogue("tls") == {str(p): hashlib.sha256(d).hexdigest() for p, d in files.items()}
    assert summary["uploaded"] == 2, summary
    tmp = Path(https_api.environ["TMPDIR"])
    made = [p.name for p in tmp.iterdir()]
    assert len(made) == (workers > 1) and all(n.startswith("putplace-metrics-") for n in made), made
    https_api.stop()
    assert list(tmp.iterdir()) == [], "the workers' metrics dir is deleted at exit"


def test_an_untrusted_certificate_stops_the_agent_with_one_line(https_api: ApiProcess, tree: Path) -> None:
    (tree / "a.txt").write_text("alpha\n")
    agent = Agent(https_api, tree, tree.parent, node="tls")
    for more in (["--once"], []):  # a single pass, and a long-running agent: both stop at once
        r = subprocess.run(agent.argv(*more), env=agent.environ(), capture_output=True, text=True, timeout=60)
        line = one_line_error(r)
        assert "TLS certificate of https://127.0.0.1" in line and "unable to get local issuer certificate" in line, line
        assert "--ca-bundle" in line, line
    assert https_api.catalogue("tls") == {}


def test_plain_http_to_the_https_port_fails_clearly(https_api: ApiProcess, tree: Path) -> None:
    plain = https_api.url.replace("https://", "http://")
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(plain + "/stats", headers={"X-API-Key": ADMIN_KEY}, timeout=10)
    (tree / "a.txt").write_text("alpha\n")
    agent = Agent(https_api, tree, tree.parent, node="tls", env={"PUTPLACE_RETRY_FOR_SECONDS": "1"})
    r = subprocess.run(
        [*agent.argv("--once"), "--server", plain],  # the last --server wins
        env=agent.environ(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1, r.stderr  # its files stay owed, for the next pass
    assert "Traceback" not in r.stderr
    assert "Server disconnected without sending a response" in r.stderr, r.stderr
    with https_api.http() as c:  # the API keeps serving HTTPS
        assert c.get("/stats").status_code == 200


def _api(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PUTPLACE_")}
    return subprocess.run(
        [sys.executable, "-m", "putplace_api.cli", "--port", "0"],
        env=clean | {"PUTPLACE_DATA_DIR": str(cwd / "data"), **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_api_refuses_half_or_broken_tls_settings(pki: Pki, tmp_path: Path) -> None:
    other = make_pki(tmp_path / "other")
    cases = [
        ({"PUTPLACE_TLS_CERTFILE": str(pki.cert)}, "set both or neither"),
        ({"PUTPLACE_TLS_KEYFILE": str(pki.key)}, "set both or neither"),
        ({**pki.server_env(), "PUTPLACE_TLS_KEYFILE": str(tmp_path / "missing.key")}, "not a readable file"),
        ({**pki.server_env(), "PUTPLACE_TLS_KEYFILE": str(other.key)}, "cannot serve HTTPS"),  # not its key
        ({**pki.server_env(), "PUTPLACE_SYNC": str(tmp_path)}, "PUTPLACE_SYNC does not work with TLS"),
    ]
    for env, words in cases:
        r = _api(env, tmp_path)
        lines = [line for line in r.stderr.splitlines() if line.startswith("putplace-api: ")]
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert len(lines) == 1 and words in lines[0], (env, r.stderr)


def test_the_agent_refuses_a_ca_bundle_it_cannot_load(tmp_path: Path) -> None:
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("not a certificate\n")
    for bundle in (tmp_path / "missing.pem", not_pem):
        r = subprocess.run(
            [sys.executable, "-m", "putplace_agent", "sync", str(tmp_path), "--once", "--ca-bundle", str(bundle)],
            env={**os.environ, "PUTPLACE_API_KEY": ADMIN_KEY}, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert "cannot load the CA bundle" in one_line_error(r)
