"""Server data dirs: a run killed before it could delete its dirs does not leave them for good.

The dirs live in /dev/shm (RAM): a few killed runs' leftovers once filled it and starved a
later CI run's S3 server. Each dir records its creator; the next ``make_workdir`` deletes the
dirs whose creator has exited and in which no process still runs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.servers.base import make_workdir, remove_workdir, sweep_stale_workdirs, workdir

ROOT = Path(__file__).resolve().parents[2]


def _made_by_an_exited_process(parent: Path) -> Path:
    """A workdir whose creator exited without deleting it (as a SIGKILLed run leaves it)."""
    code = "import sys; from pathlib import Path; from tests.servers.base import make_workdir; "
    code += "print(make_workdir('left', Path(sys.argv[1])))"
    made = subprocess.run(
        [sys.executable, "-c", code, str(parent)], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60
    )
    path = Path(made.stdout.strip())
    (path / "data").write_bytes(b"x" * 1000)
    return path


def test_a_dead_runs_dir_is_deleted_by_the_next_one(tmp_path: Path) -> None:
    left = _made_by_an_exited_process(tmp_path)
    mine = make_workdir("mine", tmp_path)
    assert not left.exists() and not left.with_name(left.name + ".owner").exists()
    assert mine.is_dir(), "the creator is alive: its dir stays"
    assert sweep_stale_workdirs(tmp_path) == []
    remove_workdir(mine)
    assert list(tmp_path.iterdir()) == []


def test_a_dir_a_process_still_runs_in_is_kept(tmp_path: Path) -> None:
    # A detached server (python -m tests.servers start) outlives the command that made its dir.
    left = _made_by_an_exited_process(tmp_path)
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], cwd=left / ".")
    try:
        assert sweep_stale_workdirs(tmp_path) == []
        assert (left / "data").exists()
    finally:
        server.kill()
        server.wait()
    assert sweep_stale_workdirs(tmp_path) == [left]
    assert not left.exists()


def test_the_context_manager_deletes_its_dir(tmp_path: Path) -> None:
    with workdir("scoped", tmp_path) as path:
        (path / "file").write_text("data")
        assert path.with_name(path.name + ".owner").read_text().split()[0].isdigit()
    assert list(tmp_path.iterdir()) == []
