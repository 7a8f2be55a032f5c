"""/v1/secrets: values sandboxes never see (their egress proxy puts them in request headers
going to the allowed hosts). Answers never carry a value."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response

from ...manager import Manager
from ...schema import CreateSecret, SecretInfo, SecretList
from .deps import manager

router = APIRouter(prefix="/v1/secrets", tags=["secrets"])


@router.post("", status_code=201, response_model=SecretInfo)
async def create_secret(body: CreateSecret, m: Annotated[Manager, Depends(manager)]) -> SecretInfo:
    """Register (or replace) a secret. Sandboxes created with ``secrets=[name]`` see its placeholder
    in the env var ``name``."""
    return SecretInfo.model_validate(m.put_secret(body.name, body.value, body.allowed_hosts).public())


@router.get("", response_model=SecretList)
async def list_secrets(m: Annotated[Manager, Depends(manager)]) -> SecretList:
    return SecretList(secrets=[SecretInfo.model_validate(s.public()) for s in m.list_secrets()])


@router.delete("/{name}", status_code=204)
async def delete_secret(name: str, m: Annotated[Manager, Depends(manager)]) -> Response:
    m.delete_secret(name)
    return Response(status_code=204)
