"""The daemon inside every sandbox, its wire protocol and the host's async client.

- ``agent.py``: the daemon. One standard-library-only file, copied into sandboxes and run as
  ``python3 -I -S agent.py --socket ... --ready-fd 3 --log ...``; it imports nothing from corral.
- ``protocol.py``: frame constants and helpers (standard library only).
- ``client.py``: :class:`AgentClient` (asyncio), used by backends and the manager.

``AGENT_PATH`` is the host path of ``agent.py`` (what a backend copies or bind-mounts).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

AGENT_PATH = Path(__file__).resolve().with_name("agent.py")

if TYPE_CHECKING:
    from corral.agent.client import AgentClient, FileDownload

__all__ = ["AGENT_PATH", "AgentClient", "FileDownload"]


def __getattr__(name: str) -> Any:  # lazy: importing corral.agent stays cheap (no asyncio)
    if name in ("AgentClient", "FileDownload"):
        from corral.agent import client

        return getattr(client, name)
    raise AttributeError(f"module 'corral.agent' has no attribute {name!r}")
