"""/v1/sandboxes/{id}/pty: interactive terminals (start, streamed; input; resize).

Re-attach and kill reuse the commands routes (``GET .../commands/{pid}/stream``, ``DELETE
.../commands/{pid}``): a terminal is a process whose output is the terminal's.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse

from ...manager import Manager
from ...schema import CreatePty, PtyInput, ResizePty
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
