"""/v1/sandboxes: create, list, get, set timeout, kill."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from ... import errors
from ...manager import Manager, SandboxRecord, traffic_token
from ...schema import CreateSandbox, SandboxInfo, SandboxList, SetTimeout
from .deps import manager

router = APIRouter(prefix="/v1/sandboxes", tags=["sandboxes"])


def _ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def info(rec: SandboxRecord, domain: str) -> SandboxInfo:
    return SandboxInfo(
        sandbox_id=rec.id, template=rec.template, state=rec.state,  # type: ignore[arg-type]
        started_at=_ts(rec.created_at), end_at=_ts(rec.end_at), ended_at=_ts(rec.ended_at),  # type: ignore[arg-type]
        metadata=rec.metadata, cpu_count=rec.cpu_count, memory_mb=rec.memory_mb, disk_mb=rec.disk_mb,
        internet=rec.internet, isolation=rec.backend, reason=rec.reason, public_ports=rec.public_ports,
        traffic_token=None if rec.public_ports else traffic_token(rec), domain=domain,
    )


@router.post("", status_code=201, response_model=SandboxInfo)
async def create_sandbox(body: CreateSandbox, m: Annotated[Manager, Depends(manager)]) -> SandboxInfo:
    return info(await m.create(body), m.settings.domain)


@router.get("", response_model=SandboxList)
async def list_sandboxes(
    m: Annotated[Manager, Depends(manager)],
    state: Annotated[list[str] | None, Query()] = None,
    metadata: Annotated[list[str] | None, Query(description="key=value, repeatable")] = None,
) -> SandboxList:
    wanted: dict[str, str] = {}
    for item in metadata or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise errors.InvalidRequestError(f"metadata filter {item!r} is not key=value")
        wanted[key] = value
    return SandboxList(sandboxes=[info(r, m.settings.domain) for r in m.list(states=state, metadata=wanted)])


@router.get("/{sandbox_id}", response_model=SandboxInfo)
async def get_sandbox(sandbox_id: str, m: Annotated[Manager, Depends(manager)]) -> SandboxInfo:
    return info(m.get(sandbox_id), m.settings.domain)


@router.post("/{sandbox_id}/timeout", response_model=SandboxInfo)
async def set_timeout(sandbox_id: str, body: SetTimeout, m: Annotated[Manager, Depends(manager)]) -> SandboxInfo:
    return info(await m.set_timeout(sandbox_id, body.timeout), m.settings.domain)


@router.delete("/{sandbox_id}", status_code=204)
async def kill_sandbox(sandbox_id: str, m: Annotated[Manager, Depends(manager)]) -> Response:
    await m.kill(sandbox_id)
    return Response(status_code=204)
