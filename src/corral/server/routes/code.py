"""/v1/sandboxes/{id}/code: run cells in Jupyter kernels (streamed) and manage code contexts."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse

from ...manager import Manager
from ...schema import CodeContext, CodeContextList, CreateCodeContext, RunCode
from ..streaming import ndjson, sse
from .deps import manager

router = APIRouter(prefix="/v1/sandboxes/{sandbox_id}/code", tags=["code"])

STREAM_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "NDJSON (or SSE with Accept: text/event-stream): accepted (the context), then E2B's "
        "execution events: stdout, stderr (text, timestamp), result (one key per format, is_main_result), "
        "error (name, value, traceback), number_of_executions, keepalive; last end_of_execution",
        "content": {"application/x-ndjson": {}, "text/event-stream": {}},
    }
}


@router.post("", responses=STREAM_DOC, response_class=StreamingResponse)
async def run_code(
    sandbox_id: str, body: RunCode, request: Request, m: Annotated[Manager, Depends(manager)]
) -> StreamingResponse:
    """Run a cell. A client that goes away interrupts it (the context keeps its state).
    (Served by ``server/fastpath.py``; this declares it.)"""
    events = await m.run_code(sandbox_id, body)
    if "text/event-stream" in request.headers.get("accept", ""):
        return StreamingResponse(sse(events, decode=False), media_type="text/event-stream")
    return StreamingResponse(ndjson(events, decode=False), media_type="application/x-ndjson")


@router.get("/contexts", response_model=CodeContextList)
async def list_contexts(sandbox_id: str, m: Annotated[Manager, Depends(manager)]) -> CodeContextList:
    return CodeContextList.model_validate(await m.code_contexts(sandbox_id))


@router.post("/contexts", response_model=CodeContext, status_code=201)
async def create_context(
    sandbox_id: str, body: CreateCodeContext, m: Annotated[Manager, Depends(manager)]
) -> CodeContext:
    """A new context with its own kernel (started before this answers)."""
    return CodeContext.model_validate(await m.create_code_context(sandbox_id, body.language, body.cwd))


@router.post("/contexts/{context_id}/restart", response_model=CodeContext)
async def restart_context(sandbox_id: str, context_id: str, m: Annotated[Manager, Depends(manager)]) -> CodeContext:
    """A fresh kernel for the context (its state is lost)."""
    return CodeContext.model_validate(await m.restart_code_context(sandbox_id, context_id))


@router.delete("/contexts/{context_id}", status_code=204)
async def remove_context(sandbox_id: str, context_id: str, m: Annotated[Manager, Depends(manager)]) -> Response:
    await m.remove_code_context(sandbox_id, context_id)
    return Response(status_code=204)
