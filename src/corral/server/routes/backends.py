"""/v1/backends: the isolation backends, whether each works on this host and why not."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from ...manager import Manager
from ...schema import BackendInfo, BackendList
from .deps import manager

router = APIRouter(prefix="/v1/backends", tags=["backends"])


@router.get("", response_model=BackendList)
async def list_backends(m: Annotated[Manager, Depends(manager)]) -> BackendList:
    return BackendList(backends=[BackendInfo(**b.as_dict()) for b in await m.backend_infos()])
