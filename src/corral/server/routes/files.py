"""/v1/sandboxes/{id}/files and /fs: streamed upload and download, listing, stat, mkdir, rename, remove."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse

from ...manager import Manager
from ...schema import EntryInfo, EntryList, MakeDir, MakeDirResult, Rename
from .deps import manager

router = APIRouter(prefix="/v1/sandboxes/{sandbox_id}", tags=["files"])

User = Annotated[str, Query(pattern=r"^[a-z_][a-z0-9_-]*$", max_length=32)]
Path = Annotated[str, Query(min_length=1, max_length=4096)]


@router.get(
    "/files",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "the file's bytes"}},
)
async def read_file(
    sandbox_id: str, path: Path, m: Annotated[Manager, Depends(manager)], user: User = "user"
) -> StreamingResponse:
    chunks = await m.read_file(sandbox_id, path, user)
    return StreamingResponse(chunks, media_type="application/octet-stream")


@router.put("/files", response_model=EntryInfo)
async def write_file(
    sandbox_id: str, path: Path, request: Request, m: Annotated[Manager, Depends(manager)], user: User = "user"
) -> EntryInfo:
    async def body() -> AsyncIterator[bytes]:
        async for chunk in request.stream():
            if chunk:
                yield chunk

    return EntryInfo(**await m.write_file(sandbox_id, path, user, body()))


@router.get("/fs/list", response_model=EntryList)
async def list_dir(
    sandbox_id: str, path: Path, m: Annotated[Manager, Depends(manager)], depth: int = 1, user: User = "user"
) -> EntryList:
    return EntryList(entries=[EntryInfo(**e) for e in await m.list_dir(sandbox_id, path, depth, user)])


@router.get("/fs/stat", response_model=EntryInfo)
async def stat(sandbox_id: str, path: Path, m: Annotated[Manager, Depends(manager)], user: User = "user") -> EntryInfo:
    return EntryInfo(**await m.stat(sandbox_id, path, user))


@router.post("/fs/mkdir", response_model=MakeDirResult)
async def make_dir(sandbox_id: str, body: MakeDir, m: Annotated[Manager, Depends(manager)]) -> MakeDirResult:
    return MakeDirResult(created=await m.make_dir(sandbox_id, body.path, body.user))


@router.post("/fs/rename", response_model=EntryInfo)
async def rename(sandbox_id: str, body: Rename, m: Annotated[Manager, Depends(manager)]) -> EntryInfo:
    return EntryInfo(**await m.rename(sandbox_id, body.src, body.dst, body.user))


@router.delete("/fs", status_code=204)
async def remove(sandbox_id: str, path: Path, m: Annotated[Manager, Depends(manager)], user: User = "user") -> Response:
    await m.remove(sandbox_id, path, user)
    return Response(status_code=204)
