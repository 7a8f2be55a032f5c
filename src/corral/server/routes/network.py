"""/v1/sandboxes/{id}/network: the egress policy (live-updatable), refused attempts, traffic."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from ...manager import Manager
from ...schema import NetworkInfo, UpdateNetwork
from .deps import manager

router = APIRouter(prefix="/v1/sandboxes/{sandbox_id}/network", tags=["network"])


@router.get("", response_model=NetworkInfo)
async def get_network(sandbox_id: str, m: Annotated[Manager, Depends(manager)]) -> NetworkInfo:
    return NetworkInfo.model_validate(await m.network_info(sandbox_id))


@router.patch("", response_model=NetworkInfo)
async def update_network(sandbox_id: str, body: UpdateNetwork, m: Annotated[Manager, Depends(manager)]) -> NetworkInfo:
    """Internet on or off and the allow/deny lists, applied at once; fields left out stay as they are."""
    return NetworkInfo.model_validate(await m.update_network(sandbox_id, body))
