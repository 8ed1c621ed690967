"""Suite-wide pytest configuration."""

pytest_plugins = ["tests.servers.fixtures"]


from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests.processes import ApiProcess  # noqa: E402


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def api_process(tmp_path: Path) -> Iterator[ApiProcess]:
    """A real ``putplace-api`` process (SQLite, local storage) with the tests' admin key."""
    api = ApiProcess(tmp_path / "api")
    api.workdir.mkdir()
    api.start()
    yield api
    api.stop()
