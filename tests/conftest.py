from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from corral import Sandbox
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
def api(corral_server: ServerProcess) -> dict[str, str]:
    """Connection arguments for the session's real server."""
    return {"api_url": corral_server.url, "api_key": corral_server.api_key}


@pytest.fixture()
def sbx(api: dict[str, str]) -> Iterator[Sandbox]:
    """A fresh sandbox, killed after the test."""
    with Sandbox.create(**api) as sandbox:
        yield sandbox


@pytest.fixture()
def corral_env(corral_server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> ServerProcess:
    """Point the SDK at the session server through its environment variables."""
    monkeypatch.setenv("CORRAL_API_URL", corral_server.url)
    monkeypatch.setenv("CORRAL_API_KEY", corral_server.api_key)
    return corral_server


def pytest_configure(config: pytest.Config) -> None:
    if os.geteuid() != 0:
        raise pytest.UsageError("corral's tests run real sandboxes and need root (bubblewrap, cgroups, nftables)")
