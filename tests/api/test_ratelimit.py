"""Per-key rate limits: 429 with Retry-After and RateLimit headers, and one limit shared by
several API processes on one database."""

from __future__ import annotations

import ast
import math
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.api.conftest import ADMIN_KEY, Api
from tests.processes import ApiProcess
from tests.servers.base import Process, free_ports


def test_key_over_its_limit_gets_429_with_headers(api: Api) -> None:
    limited = api.new_key("read", rate_limit=0.5, rate_limit_burst=3)
    unlimited = api.new_key("read")
    with api.http(key=limited) as c:
        codes = [c.get("/stats").status_code for _ in range(3)]
        refused = c.get("/stats")
    assert codes == [200, 200, 200]
    assert refused.status_code == 429
    assert refused.json() == {"detail": "Rate limit exceeded for this API key"}
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["ratelimit-limit"] == "0.5" and refused.headers["ratelimit-remaining"] == "0"
    with api.http(key=unlimited) as c:
        assert all(c.get("/stats").status_code == 200 for _ in range(20))
    metrics_key = api.new_key("metrics")
    with api.http(key=metrics_key) as c:
        text = c.get("/metrics").text
    assert 'putplace_rate_limited_total{key_id="' in text and limited not in text


def test_default_limit_from_settings_applies_to_keys_without_their_own(start_api: Callable[..., Api]) -> None:
    api = start_api(rate_limit=1, rate_limit_burst=2)
    key = api.new_key("read")
    with api.http(key=key) as c:
        codes = [c.get("/stats").status_code for _ in range(4)]
    assert codes[:2] == [200, 200] and codes[2:] == [429, 429]


def test_limit_holds_across_three_processes_sharing_the_database(tmp_path: Path) -> None:
    rate, burst, seconds = 40.0, 20, 4.0
    ports = free_ports(3)
    env = {
        "PUTPLACE_DATA_DIR": str(tmp_path / "data"),
        "PUTPLACE_ADMIN_KEY": ADMIN_KEY,
        "PUTPLACE_LOG_LEVEL": "warning",
    }
    procs = [
        Process.spawn(
            f"api-{p}",
            [sys.executable, "-m", "putplace_api.cli", "--port", str(p)],
            cwd=tmp_path,
            log_path=tmp_path / f"api-{p}.log",
            env=env,
        )
        for p in ports
    ]
    try:
        for proc, port in zip(procs, ports, strict=True):
            proc.wait_ready(lambda port=port: _answers(port), timeout=60)
        r = httpx.post(
            f"http://127.0.0.1:{ports[0]}/api_keys",
            headers={"X-API-Key": ADMIN_KEY},
            json={"name": "shared", "scopes": ["read"], "rate_limit": rate, "rate_limit_burst": burst},
        )
        key = r.json()["api_key"]
        allowed = [0, 0, 0]
        stop = time.monotonic() + seconds
        started = time.monotonic()

        def hammer(i: int) -> None:
            with httpx.Client(base_url=f"http://127.0.0.1:{ports[i % 3]}", headers={"X-API-Key": key}) as c:
                while time.monotonic() < stop:
                    if c.get("/stats").status_code == 200:
                        allowed[i % 3] += 1

        threads = [threading.Thread(target=hammer, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
    finally:
        for proc in procs:
            proc.stop()
    expected = burst + rate * elapsed
    total = sum(allowed)
    assert all(n > 0 for n in allowed), allowed  # every replica served some
    assert 0.8 * expected <= total <= 1.2 * expected, (total, expected, allowed)


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


# A closed-loop client as a process of its own: ``connections`` requests in flight with one
# key until SIGTERM, then it prints how many answers of each status it got. Raw HTTP/1.1 on
# asyncio streams, not httpx: a client that spends little CPU per request loads the server
# more and competes less with it and with the quiet client for the machine's two cores.
_HAMMER = """
import asyncio, collections, signal, sys
host, port, key, connections = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
request = f"GET /stats HTTP/1.1\\r\\nHost: {host}\\r\\nX-API-Key: {key}\\r\\n\\r\\n".encode()
codes = collections.Counter()
async def one():
    reader, writer = await asyncio.open_connection(host, port)
    while True:
        writer.write(request)
        head = await reader.readuntil(b"\\r\\n\\r\\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\\r\\n")[0])
        await reader.readexactly(length)
        codes[int(head.split(b" ", 2)[1])] += 1
async def main():
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    tasks = [asyncio.create_task(one()) for _ in range(connections)]
    print("ready", flush=True)
    await stop.wait()
    print(dict(codes), flush=True)
asyncio.run(main())
"""


def _quiet_latencies(c: httpx.Client, n: int, period: float) -> list[float]:
    """``n`` requests, one every ``period`` seconds (a modest, steady client): their latencies."""
    out = []
    for _ in range(n):
        started = time.perf_counter()
        assert c.get("/stats").status_code == 200
        elapsed = time.perf_counter() - started
        out.append(elapsed)
        time.sleep(max(0.0, period - elapsed))
    return out


def _p99(samples: list[float]) -> float:
    return sorted(samples)[math.ceil(0.99 * len(samples)) - 1]


def test_a_noisy_key_does_not_slow_a_quiet_one(tmp_path: Path) -> None:
    api = ApiProcess(tmp_path / "api")
    api.workdir.mkdir()
    api.start()
    try:
        with api.http() as c:
            keys = [
                c.post("/api_keys", json={"name": name, "scopes": ["read"], "rate_limit": rate}).json()["api_key"]
                for name, rate in (("noisy", 2.0), ("quiet", 1000.0))
            ]
        noisy, quiet = keys
        hammer = subprocess.Popen(
            [sys.executable, "-c", _HAMMER, "127.0.0.1", str(api.port), noisy, "32"], stdout=subprocess.PIPE, text=True
        )
        try:
            assert hammer.stdout is not None and hammer.stdout.readline().strip() == "ready"
            quiet_alone: list[float] = []
            quiet_noisy: list[float] = []
            with httpx.Client(base_url=api.url, headers={"X-API-Key": quiet}, timeout=30) as c:
                _quiet_latencies(c, 50, 0.01)  # warm-up: connection, key lookup, caches
                # Rounds alternate quiet and noisy, so a change in the machine's load hits both alike.
                for _ in range(5):
                    hammer.send_signal(signal.SIGSTOP)
                    time.sleep(0.2)
                    quiet_alone += _quiet_latencies(c, 80, 0.02)
                    hammer.send_signal(signal.SIGCONT)
                    time.sleep(0.2)
                    quiet_noisy += _quiet_latencies(c, 80, 0.02)
        finally:
            hammer.send_signal(signal.SIGCONT)
            hammer.terminate()
            out, _ = hammer.communicate(timeout=30)
    finally:
        api.stop()
    codes = ast.literal_eval(out.strip().splitlines()[-1])
    assert codes.get(429, 0) > 10 * codes.get(200, 0), codes  # it asked far above its limit, and was refused
    ratio = _p99(quiet_noisy) / _p99(quiet_alone)
    assert ratio <= 2.0, (ratio, _p99(quiet_alone), _p99(quiet_noisy), codes)
