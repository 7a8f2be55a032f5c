from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from corral import Sandbox


@pytest.fixture()
def api(corral_server: Any) -> dict[str, str]:
    """Connection arguments for the session's real server."""
    return {"api_url": corral_server.url, "api_key": corral_server.api_key}


@pytest.fixture()
def sbx(api: dict[str, str]) -> Iterator[Sandbox]:
    """A fresh sandbox, killed after the test."""
    with Sandbox.create(**api) as sandbox:
        yield sandbox
