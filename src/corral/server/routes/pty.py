"""/v1/sandboxes/{id}/pty: interactive terminals (start, streamed; input; resize; a WebSocket).

Re-attach and kill reuse the commands routes (``GET .../commands/{pid}/stream``, ``DELETE
.../commands/{pid}``): a terminal is a process whose output is the terminal's.

``GET .../pty/ws`` is the same terminal over one WebSocket, for browsers (xterm.js and the like).
Server to client: a JSON text frame ``{"type": "start", "pid": N}``, then the terminal output as
binary frames (UTF-8, decoded incrementally so no frame splits a character), then a JSON text
frame ``{"type": "end", "exit_code": N, "error": null|"killed"|"timeout"}`` and the close. Client
to server: JSON text frames ``{"type": "input", "data": "..."}`` and ``{"type": "resize", "cols":
C, "rows": R}``; anything else is answered with ``{"type": "error", "code": "invalid_request",
"message": ...}`` and the session goes on. Closing the socket leaves the terminal running:
``?pid=N`` re-attaches (its buffered output is replayed). Errors before the start (unknown
sandbox or pid, bad size) are an error frame, then a close with code 4000 + the HTTP status.
The API key comes in the ``X-API-Key`` header or, for browsers, the ``api_key`` query parameter.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from ... import errors
from ...manager import Manager
from ...schema import CreatePty, PtyInput, ResizePty
from ..render import invalid_request
from ..streaming import decoded
from .commands import STREAM_DOC, _stream
from .deps import manager

router = APIRouter(prefix="/v1/sandboxes/{sandbox_id}/pty", tags=["pty"])


@router.post("", responses=STREAM_DOC, response_class=StreamingResponse)
async def create_pty(
    sandbox_id: str, body: CreatePty, request: Request, m: Annotated[Manager, Depends(manager)]
) -> StreamingResponse:
    """Start a terminal (an interactive login bash, or ``cmd`` with ``bash -l -c``); its output streams back."""
    cmd, args = ("/bin/bash", ["-i", "-l"]) if body.cmd is None else ("/bin/bash", ["-l", "-c", body.cmd])
    events = await m.start_pty(
        sandbox_id, body.cols, body.rows, cmd=cmd, args=args, envs=body.envs, cwd=body.cwd, user=body.user,
        timeout=body.timeout,
    )
    return _stream(request, events)


@router.post("/{pid}/input", status_code=204)
async def send_input(sandbox_id: str, pid: int, body: PtyInput, m: Annotated[Manager, Depends(manager)]) -> Response:
    """Type ``data`` into the terminal (keystrokes: ``\\r`` for Enter, ``\\x03`` for Ctrl-C...)."""
    await m.send_stdin(sandbox_id, pid, body.data.encode())
    return Response(status_code=204)


@router.post("/{pid}/resize", status_code=204)
async def resize(sandbox_id: str, pid: int, body: ResizePty, m: Annotated[Manager, Depends(manager)]) -> Response:
    """Change the terminal's size (its programs get SIGWINCH)."""
    await m.resize_pty(sandbox_id, pid, body.cols, body.rows)
    return Response(status_code=204)


@router.websocket("/ws")
async def pty_websocket(
    websocket: WebSocket,
    sandbox_id: str,
    cols: int = 80,
    rows: int = 24,
    pid: int | None = None,
    cmd: str | None = None,
    cwd: str | None = None,
    user: str = "user",
) -> None:
    """A terminal over a WebSocket: a new one (``cols``/``rows``, ``cmd``, ``cwd``, ``user``) or, with
    ``pid``, an existing one re-attached. See the module docstring for the frames."""
    m: Manager = websocket.app.state.manager
    await websocket.accept()
    try:
        if pid is not None:
            events = await m.connect_command(sandbox_id, pid)
        else:
            try:
                body = CreatePty.model_validate({"cols": cols, "rows": rows, "cmd": cmd, "cwd": cwd, "user": user})
            except ValidationError as e:
                raise invalid_request(e.errors()) from None
            args = ["-i", "-l"] if body.cmd is None else ["-l", "-c", body.cmd]
            events = await m.start_pty(
                sandbox_id, body.cols, body.rows, cmd="/bin/bash", args=args, cwd=body.cwd, user=body.user
            )
    except errors.CorralError as err:
        with contextlib.suppress(Exception):
            await websocket.send_json({"type": "error", **err.to_body()})
            await websocket.close(code=4000 + err.status)
        return
    stream = decoded(events)
    try:
        try:
            first = await stream.__anext__()
        except StopAsyncIteration:
            first = {}
        started = first.get("pid") if first.get("type") == "start" else pid
        if started is None:  # cannot happen with a live agent; be explicit rather than hang
            await websocket.close(code=1011)
            return
        await websocket.send_json({"type": "start", "pid": started})
        pump = asyncio.ensure_future(_pump_output(websocket, stream))
        listen = asyncio.ensure_future(_listen(websocket, m, sandbox_id, started))
        try:
            await asyncio.wait({pump, listen}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pump, listen):
                task.cancel()
            await asyncio.gather(pump, listen, return_exceptions=True)
    except (WebSocketDisconnect, RuntimeError):
        pass  # the client went away
    finally:
        # Let go of the agent stream: the terminal goes on (``?pid=`` re-attaches).
        with contextlib.suppress(Exception):
            await stream.aclose()  # type: ignore[attr-defined]


async def _pump_output(websocket: WebSocket, events: AsyncIterator[dict[str, Any]]) -> None:
    """Terminal output to the client, until the end event (then the close)."""
    try:
        async for event in events:
            kind = event.get("type")
            if kind in ("stdout", "stderr"):
                await websocket.send_bytes(event["data"].encode())
            elif kind == "end":
                await websocket.send_json(
                    {"type": "end", "exit_code": event.get("exit_code"), "error": event.get("error")}
                )
                await websocket.close(code=1000)
                return
    except (WebSocketDisconnect, RuntimeError):
        return  # the client went away
    except errors.CorralError as err:  # the sandbox went away under the terminal
        with contextlib.suppress(Exception):
            await websocket.send_json({"type": "error", **err.to_body()})
            await websocket.close(code=4000 + err.status)
        return
    with contextlib.suppress(Exception):  # the stream ended without an end event
        await websocket.close(code=1011)


async def _listen(websocket: WebSocket, m: Manager, sandbox_id: str, pid: int) -> None:
    """Client frames: input and resize; bad ones get an error frame, the session goes on."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        try:
            request = _parse_frame(message)
            if isinstance(request, PtyInput):
                await m.send_stdin(sandbox_id, pid, request.data.encode())
            else:
                await m.resize_pty(sandbox_id, pid, request.cols, request.rows)
        except errors.CorralError as err:
            await websocket.send_json({"type": "error", **err.to_body()})


def _parse_frame(message: Mapping[str, Any]) -> PtyInput | ResizePty:
    text = message.get("text")
    if text is None:
        raise errors.InvalidRequestError('frames must be JSON text: {"type": "input"|"resize", ...}')
    try:
        frame = json.loads(text)
    except ValueError:
        raise errors.InvalidRequestError("frame is not JSON") from None
    if not isinstance(frame, dict) or frame.get("type") not in ("input", "resize"):
        raise errors.InvalidRequestError('frame "type" must be "input" or "resize"')
    fields = {k: v for k, v in frame.items() if k != "type"}
    try:
        return PtyInput.model_validate(fields) if frame["type"] == "input" else ResizePty.model_validate(fields)
    except ValidationError as e:
        raise invalid_request(e.errors()) from None
