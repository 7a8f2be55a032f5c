from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from helpers import ServerProcess


@pytest.fixture(scope="session")
def corral_server() -> Iterator[ServerProcess]:
    """One real corral server for the session (tests that restart or kill a server start their own)."""
    server = ServerProcess().start()
    try:
        yield server
    finally:
        server.stop()
        server.remove_dirs()


@pytest.fixture()
def corral_env(corral_server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> ServerProcess:
    """Point the SDK at the session server through its environment variables."""
    monkeypatch.setenv("CORRAL_API_URL", corral_server.url)
    monkeypatch.setenv("CORRAL_API_KEY", corral_server.api_key)
    return corral_server


def pytest_configure(config: pytest.Config) -> None:
    if os.geteuid() != 0:
        raise pytest.UsageError("corral's tests run real sandboxes and need root (bubblewrap, cgroups, nftables)")
