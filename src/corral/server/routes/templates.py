"""/v1/templates and /v1/builds: build templates from Dockerfiles, list, get and delete them,
and read a build's record and log."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse

from ... import errors
from ...manager import Manager
from ...schema import BuildInfo, TemplateConfigInfo, TemplateInfo, TemplateList
from ...templates.store import Resolved
from ..streaming import with_keepalives
from .deps import manager

router = APIRouter(tags=["templates"])

BUILD_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "NDJSON build events: start {build_id, steps}; step {step, total, instruction}; "
        "log {step, data} (one line of output); step_end {step, cached, seconds}; "
        "end {status: succeeded|failed, error: {code, message}|null, template}",
        "content": {"application/x-ndjson": {}},
    }
}


def template_info(res: Resolved) -> TemplateInfo:
    return TemplateInfo(
        name=res.name, tag=res.tag, kind=res.kind,  # type: ignore[arg-type]
        build_id=res.build_id, created_at=datetime.fromtimestamp(res.created_at, UTC) if res.created_at else None,
        layers=len(res.layers), config=TemplateConfigInfo(**vars(res.config)),
    )  # fmt: skip


async def _ndjson(events: AsyncIterator[dict[str, Any]]) -> AsyncGenerator[bytes, None]:
    async for event in with_keepalives(events):
        yield json.dumps(event, separators=(",", ":")).encode() + b"\n"


@router.post("/v1/templates", responses=BUILD_DOC, response_class=StreamingResponse)
async def build_template(
    request: Request,
    m: Annotated[Manager, Depends(manager)],
    name: Annotated[str, Query(description="template name")],
    tag: Annotated[str, Query(description="template tag")] = "latest",
    dockerfile: Annotated[str, Query(description="path of the Dockerfile inside the context")] = "Dockerfile",
    build_arg: Annotated[list[str] | None, Query(description="ARG value as K=V, repeatable")] = None,
    start_cmd: Annotated[str | None, Query(description="start command (overrides CMD/ENTRYPOINT)")] = None,
    ready_cmd: Annotated[str | None, Query(description="ready check: create returns once it exits 0")] = None,
    no_cache: bool = False,
) -> StreamingResponse:
    """Build a template. The body is the build context as a tar stream (``application/x-tar``)
    holding the Dockerfile; the answer streams the build's events, one JSON object per line.
    Bad input (a syntax error, an unsupported instruction, a COPY outside the context) is a 4xx
    before any step runs; a failure during the build is the ``end`` event's ``error``."""
    args: dict[str, str] = {}
    for item in build_arg or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise errors.InvalidRequestError(f"build_arg {item!r} is not K=V")
        args[key] = value
    build = await m.builds.submit(
        request.stream(), name=name, tag=tag, dockerfile=dockerfile, build_args=args, start_cmd=start_cmd,
        ready_cmd=ready_cmd, no_cache=no_cache,
    )  # fmt: skip
    return StreamingResponse(_ndjson(m.builds.follow(build.build_id)), media_type="application/x-ndjson")


@router.get("/v1/templates", response_model=TemplateList)
async def list_templates(m: Annotated[Manager, Depends(manager)]) -> TemplateList:
    return TemplateList(templates=[template_info(r) for r in m.list_templates()])


@router.get("/v1/templates/{ref}", response_model=TemplateInfo)
async def get_template(ref: str, m: Annotated[Manager, Depends(manager)]) -> TemplateInfo:
    """One template by ``name`` or ``name:tag``."""
    return template_info(m.get_template(ref))


@router.delete("/v1/templates/{ref}", status_code=204)
async def delete_template(ref: str, m: Annotated[Manager, Depends(manager)]) -> Response:
    """Delete a Dockerfile-built template (409 ``template_in_use`` while a sandbox runs from it)."""
    await m.delete_template(ref)
    return Response(status_code=204)


@router.get("/v1/builds/{build_id}", response_model=BuildInfo)
async def get_build(build_id: str, m: Annotated[Manager, Depends(manager)]) -> BuildInfo:
    rec = m.builds.get(build_id)
    return BuildInfo(
        build_id=rec["build_id"], name=rec["name"], tag=rec["tag"], status=rec["status"],
        started_at=datetime.fromtimestamp(rec["started_at"], UTC),
        finished_at=datetime.fromtimestamp(rec["finished_at"], UTC) if rec.get("finished_at") else None,
        steps=rec["steps"], error=rec.get("error"),
    )  # fmt: skip


@router.get("/v1/builds/{build_id}/logs", responses=BUILD_DOC, response_class=StreamingResponse)
async def build_logs(build_id: str, m: Annotated[Manager, Depends(manager)]) -> StreamingResponse:
    """A build's events from its start: the stored log, then live ones while it still runs."""
    m.builds.get(build_id)  # 404 before the stream starts
    return StreamingResponse(_ndjson(m.builds.follow(build_id)), media_type="application/x-ndjson")
