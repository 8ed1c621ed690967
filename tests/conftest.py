"""Suite-wide pytest configuration."""

pytest_plugins = ["tests.servers.fixtures"]


import pytest  # noqa: E402


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
