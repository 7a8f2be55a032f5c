"""/v1/sandboxes/{id}/commands: run (streamed), list, re-attach, stdin, signals."""

from __future__ import annotations

import signal as signals
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse

from ... import errors
from ...manager import Manager
from ...schema import ProcessInfo, ProcessList, RunCommand, SendSignal, SendStdin
from ..streaming import ndjson, sse
from .deps import manager

router = APIRouter(prefix="/v1/sandboxes/{sandbox_id}/commands", tags=["commands"])

STREAM_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "NDJSON (or SSE with Accept: text/event-stream) of start, stdout, stderr, keepalive and end events",
        "content": {"application/x-ndjson": {}, "text/event-stream": {}},
    }
}


def _stream(request: Request, events: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    if "text/event-stream" in request.headers.get("accept", ""):
        return StreamingResponse(sse(events), media_type="text/event-stream")
    return StreamingResponse(ndjson(events), media_type="application/x-ndjson")


@router.post("", responses=STREAM_DOC, response_class=StreamingResponse)
async def run_command(
    sandbox_id: str, body: RunCommand, request: Request, m: Annotated[Manager, Depends(manager)]
) -> StreamingResponse:
    """Run a command; its events stream back. (Served by ``server/fastpath.py``; this declares it.)"""
    return _stream(request, await m.run_command(sandbox_id, body))


@router.get("", response_model=ProcessList)
async def list_commands(sandbox_id: str, m: Annotated[Manager, Depends(manager)]) -> ProcessList:
    return ProcessList(processes=[ProcessInfo(**p) for p in await m.list_commands(sandbox_id)])


@router.get("/{pid}/stream", responses=STREAM_DOC, response_class=StreamingResponse)
async def connect_command(
    sandbox_id: str, pid: int, request: Request, m: Annotated[Manager, Depends(manager)]
) -> StreamingResponse:
    return _stream(request, await m.connect_command(sandbox_id, pid))


@router.post("/{pid}/stdin", status_code=204)
async def send_stdin(sandbox_id: str, pid: int, body: SendStdin, m: Annotated[Manager, Depends(manager)]) -> Response:
    await m.send_stdin(sandbox_id, pid, body.data.encode())
    return Response(status_code=204)


@router.post("/{pid}/stdin/close", status_code=204)
async def close_stdin(sandbox_id: str, pid: int, m: Annotated[Manager, Depends(manager)]) -> Response:
    await m.close_stdin(sandbox_id, pid)
    return Response(status_code=204)


@router.post("/{pid}/signal", status_code=204)
async def send_signal(sandbox_id: str, pid: int, body: SendSignal, m: Annotated[Manager, Depends(manager)]) -> Response:
    await m.signal_command(sandbox_id, pid, _signum(body.signal))
    return Response(status_code=204)


@router.delete("/{pid}", status_code=204)
async def kill_command(sandbox_id: str, pid: int, m: Annotated[Manager, Depends(manager)]) -> Response:
    await m.signal_command(sandbox_id, pid, signals.SIGKILL)
    return Response(status_code=204)


def _signum(value: str | int) -> int:
    if isinstance(value, int):
        num = value
    else:
        name = value.upper()
        name = name if name.startswith("SIG") else "SIG" + name
        try:
            num = int(signals.Signals[name])
        except KeyError:
            raise errors.InvalidRequestError(f"unknown signal {value!r}") from None
    if not 1 <= num <= 64:
        raise errors.InvalidRequestError(f"signal {num} is out of range")
    return num
