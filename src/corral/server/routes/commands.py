"""/v1/sandboxes/{id}/commands: run (streamed), list, re-attach, stdin, signals."""

from __future__ import annotations

import re
import signal as signals
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from ... import errors
from ...manager import Manager
from ...schema import ProcessInfo, ProcessList, RunCommand, SendSignal, SendStdin
from ..render import error_response, invalid_request
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
    """Run a command; its events stream back. (Served by ``run_command_asgi``; this declares it.)"""
    return _stream(request, await m.run_command(sandbox_id, body))


# The fast path. Running a command is the hottest call (agents run them back to back) and
# FastAPI's request pipeline costs ~0.5 ms of its ~5 ms round trip, so the Guard middleware
# hands it to this plain ASGI adapter: the same model, manager action and stream rendering as
# the route above, which stays as its OpenAPI declaration.
RUN_PATH = re.compile(r"/v1/sandboxes/(?P<sandbox_id>[^/]+)/commands")
MAX_BODY = 20 * 1024 * 1024


async def run_command_asgi(m: Manager, sandbox_id: str, scope: Any, receive: Any, send: Any) -> None:
    headers = {k.lower(): v for k, v in scope["headers"]}
    try:
        body = await _read_body(receive)
        try:
            req = RunCommand.model_validate_json(body or b"{}")
        except ValidationError as e:
            raise invalid_request(e.errors()) from None
        events = await m.run_command(sandbox_id, req)
    except errors.CorralError as err:
        return await error_response(err)(scope, receive, send)
    if b"text/event-stream" in headers.get(b"accept", b""):
        chunks, media = sse(events), b"text/event-stream"
    else:
        chunks, media = ndjson(events), b"application/x-ndjson"
    try:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", media)]})
        async for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        await chunks.aclose()  # the client went away: let go of the agent stream (the command goes on)


async def _read_body(receive: Any) -> bytes:
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise errors.InvalidRequestError("the client went away before sending its request")
        body += message.get("body", b"")
        if len(body) > MAX_BODY:
            raise errors.PayloadTooLargeError(f"request body over {MAX_BODY} bytes")
        if not message.get("more_body"):
            return bytes(body)


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
