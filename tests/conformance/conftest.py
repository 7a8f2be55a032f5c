"""The conformance suite: the same behaviour on every isolation backend that works on this host.

Each test takes ``isolation`` (one of corral's backends) and runs against the session's real
server, creating its sandboxes with ``isolation=...``. A backend the server reports as not
working on this host is skipped with the server's reason (``GET /v1/backends``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from corral import CommandExitError, Sandbox
from helpers import ServerProcess

BACKENDS = ("namespace", "gvisor", "microvm")


@pytest.fixture(scope="session")
def backend_infos(corral_server: ServerProcess) -> dict[str, dict[str, Any]]:
    with corral_server.client() as http:
        resp = http.get("/v1/backends")
    assert resp.status_code == 200, resp.text
    return {b["name"]: b for b in resp.json()["backends"]}


@pytest.fixture(scope="module", params=BACKENDS)
def isolation(request: pytest.FixtureRequest, backend_infos: dict[str, dict[str, Any]]) -> str:
    name: str = request.param
    info = backend_infos[name]
    if not info["works"]:
        pytest.skip(f"the {name} backend does not work on this host: {info['reason']}")
    return name


@pytest.fixture(scope="module")
def conn(corral_server: ServerProcess) -> dict[str, str]:
    return {"api_url": corral_server.url, "api_key": corral_server.api_key}


@pytest.fixture(scope="module")
def shared(isolation: str, conn: dict[str, str]) -> Iterator[Sandbox]:
    """One sandbox per backend and module, for tests that leave it as they found it."""
    with Sandbox.create(isolation=isolation, timeout=900, **conn) as sandbox:
        yield sandbox


def run(sbx: Sandbox, cmd: str, user: str = "user", timeout: float = 60) -> Any:
    """A command's result, whatever its exit code."""
    try:
        return sbx.commands.run(cmd, user=user, timeout=timeout)
    except CommandExitError as e:
        return e
