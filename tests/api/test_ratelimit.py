"""Per-key rate limits: 429 with Retry-After and RateLimit headers, and one limit shared by
several API processes on one database."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from putplace_api.ratelimit import REFUSAL_HOLD_SECONDS
from tests.api.conftest import ADMIN_KEY, Api
from tests.processes import ApiProcess, metric
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


def test_a_refused_key_is_answered_from_memory_and_held(tmp_path: Path) -> None:
    """What keeps a noisy key from slowing a quiet one (its latency: bench/noisy_key.py): once
    the store has refused a key, its 429s come from memory until it could next be allowed, so
    no request of it costs a store call, and each is held (``REFUSAL_HOLD_SECONDS``), so a
    client retrying at once on many connections goes at a pace the server sets, not its own.
    Counted, not timed: the store calls through the API's own metric, the hold as a lower
    bound, which a busy machine can only make longer."""
    connections, each = 16, 4
    with ApiProcess.running(tmp_path / "api") as api:
        with api.http() as c:
            # One token, then the next in 1,000 s: the whole test runs inside one refusal.
            made = c.post("/api_keys", json={"name": "noisy", "scopes": ["read"], "rate_limit": 0.001}).json()
            metrics_key = c.post("/api_keys", json={"name": "m", "scopes": ["metrics"]}).json()["api_key"]
        with httpx.Client(base_url=api.url, headers={"X-API-Key": made["api_key"]}, timeout=30) as c:
            assert c.get("/stats").status_code == 200  # the burst: the store's first grant
        refused: list[tuple[int, float, str]] = []

        def hammer() -> None:
            with httpx.Client(base_url=api.url, headers={"X-API-Key": made["api_key"]}, timeout=30) as c:
                for _ in range(each):
                    started = time.monotonic()
                    r = c.get("/stats")
                    refused.append((r.status_code, time.monotonic() - started, r.headers.get("retry-after", "")))

        threads = [threading.Thread(target=hammer) for _ in range(connections)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with httpx.Client(base_url=api.url, headers={"X-API-Key": metrics_key}, timeout=30) as c:
            text = c.get("/metrics").text
    assert [code for code, _, _ in refused] == [429] * connections * each, refused
    assert metric(text, f'putplace_rate_limited_total{{key_id="{made["_id"]}"}}') == connections * each
    # One store call granted the burst, one learnt the refusal; the other 63 refusals made none.
    take_tokens = 'putplace_backend_operation_duration_seconds_count{backend="database",operation="take_tokens",'
    assert metric(text, take_tokens + 'outcome="ok"}') == 2
    held = min(seconds for _, seconds, _ in refused)
    assert held >= REFUSAL_HOLD_SECONDS, held
    assert all(int(after) >= 900 for _, _, after in refused), refused  # the rest of the 1,000 s
