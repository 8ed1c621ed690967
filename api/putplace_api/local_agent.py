"""``putplace-api --sync PATH``: run a putplace-agent beside the API, for a laptop or a demo.

The agent is a child process talking to the API over HTTP exactly as a DaemonSet agent would,
with the write-only key the API keeps in ``<data_dir>/agent-key``. It starts once the API
answers and stops with it.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time

import httpx

from putplace_api.auth import AGENT_KEY_FILE
from putplace_api.settings import Settings

__all__ = ["LocalAgent"]

log = logging.getLogger(__name__)


class LocalAgent:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._process: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="local-agent", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()  # the agent drains, then exits
            try:
                self._process.wait(30)
            except subprocess.TimeoutExpired:
                self._process.kill()

    def _run(self) -> None:
        s = self.settings
        host = "127.0.0.1" if s.host in ("0.0.0.0", "::", "") else s.host
        url = f"http://{host}:{s.port}"
        key_file = s.data_dir / AGENT_KEY_FILE
        while not self._stopping.is_set() and not (key_file.exists() and _answers(url)):
            time.sleep(0.2)
        if self._stopping.is_set():
            return
        argv = [
            sys.executable, "-m", "putplace_agent", "sync", *map(str, s.sync),
            "--server", url, "--api-key-file", str(key_file), "--state-dir", str(s.data_dir / "agent-state"),
            "--skip", str(s.data_dir.absolute()), "--log-format", s.log_format, "--log-level", s.log_level,
        ]  # fmt: skip
        log.info("starting the local agent for %s", ", ".join(map(str, s.sync)))
        # The API stops at the same Ctrl+C: a short drain, what is left waits in the agent's index.
        env = {**os.environ, "PUTPLACE_DRAIN_SECONDS": "2"}
        self._process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, env=env)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
