"""/v1/sandboxes/{id}/ports: what listens inside, and the URLs that reach it (the proxying
itself is ``server/ports.py``, ahead of the routes)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from ...manager import Manager
from ...schema import PortInfo, PortList
from .deps import manager

router = APIRouter(prefix="/v1/sandboxes/{sandbox_id}/ports", tags=["ports"])


@router.get("", response_model=PortList)
async def list_ports(sandbox_id: str, request: Request, m: Annotated[Manager, Depends(manager)]) -> PortList:
    """TCP ports something listens on inside the sandbox, each with its host- and path-based URL.

    ``/v1/sandboxes/{id}/ports/{port}/...`` and the host ``<port>-<id>.<domain>`` proxy HTTP and
    WebSocket traffic to it (no API key; a sandbox with private ports asks for its traffic token)."""
    listening = await m.listening_ports(sandbox_id)
    scheme, port = request.url.scheme, request.url.port
    suffix = f":{port}" if port else ""
    base = str(request.base_url).rstrip("/")
    return PortList(ports=[
        PortInfo(port=p, url=f"{scheme}://{p}-{sandbox_id}.{m.settings.domain}{suffix}/",
                 path_url=f"{base}/v1/sandboxes/{sandbox_id}/ports/{p}/")
        for p in listening
    ])  # fmt: skip
