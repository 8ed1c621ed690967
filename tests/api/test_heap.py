"""A served app settles the garbage collector once ready; an embedded one leaves it alone.

Each case runs in its own interpreter: freezing the test process's heap would keep its
garbage cycles alive for the rest of the suite.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from putplace_common.heap import YOUNG_THRESHOLD

_PROBE = """
import gc, json, sys
from fastapi.testclient import TestClient
from putplace_api.app import create_app
from putplace_api.settings import Settings
app = create_app(Settings(data_dir=sys.argv[1]), serving=sys.argv[2] == "serving")
before = gc.get_freeze_count()
with TestClient(app) as client:
    assert client.get("/healthz").status_code == 200
    print(json.dumps({"before": before, "frozen": gc.get_freeze_count(), "threshold": gc.get_threshold()}))
"""


def _probe(tmp_path: Path, mode: str) -> dict[str, object]:
    r = subprocess.run(
        [sys.executable, "-c", _PROBE, str(tmp_path / mode), mode], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    result: dict[str, object] = json.loads(r.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("mode", ["serving", "embedded"])
def test_only_a_served_app_settles_the_collector(tmp_path: Path, mode: str) -> None:
    seen = _probe(tmp_path, mode)
    assert seen["before"] == 0
    if mode == "serving":
        # start-up objects moved out of every later collection, young collections rarer
        assert isinstance(seen["frozen"], int) and seen["frozen"] > 10_000
        assert seen["threshold"] == [YOUNG_THRESHOLD, 10, 10]
    else:
        assert seen["frozen"] == 0
        assert seen["threshold"] == [700, 10, 10]
