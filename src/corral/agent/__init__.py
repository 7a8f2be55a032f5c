"""The daemon inside every sandbox, its wire protocol and the host's async client.

- ``daemon/``: the daemon. A package of standard-library-only modules, run in sandboxes as
  ``python3 -I -S daemon --socket ... --ready-fd 3 --log ...`` (or from a bundle the host
  compiles); it imports nothing from corral.
- ``protocol.py``: frame constants and helpers (standard library only).
- ``client.py``: :class:`AgentClient` (asyncio), used by backends and the manager.

``AGENT_PATH`` is the host path of the ``daemon`` directory (what a backend copies or bind-mounts).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

AGENT_PATH = Path(__file__).resolve().with_name("daemon")
AGENT_TCP_PORT = 49982  # where the agent listens in sandboxes reached over their network (gvisor, microvm)

if TYPE_CHECKING:
    from corral.agent.client import AgentClient, FileDownload

__all__ = ["AGENT_PATH", "AGENT_TCP_PORT", "AgentClient", "FileDownload"]


def __getattr__(name: str) -> Any:  # lazy: importing corral.agent stays cheap (no asyncio)
    if name in ("AgentClient", "FileDownload"):
        from corral.agent import client

        return getattr(client, name)
    raise AttributeError(f"module 'corral.agent' has no attribute {name!r}")
