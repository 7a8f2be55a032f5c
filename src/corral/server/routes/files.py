"""/v1/sandboxes/{id}/files and /fs: streamed upload and download, listing, stat, mkdir, rename, remove,
directory watching, and signed file URLs (usable without the API key; see ``auth.SIGNED_PATH``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse

from ... import errors
from ...manager import Manager
from ...schema import EntryInfo, EntryList, FileUrl, FileUrlRequest, MakeDir, MakeDirResult, Rename
from ..multipart import MultipartReader, boundary_from, check_relative_name, part_filename
from ..streaming import ndjson
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


TAR_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the directory as a POSIX tar stream: member names relative to it, symlinks "
        "stored (never followed), unreadable files left out",
        "content": {"application/x-tar": {}},
    }
}


@router.get("/files/tar", response_class=StreamingResponse, responses=TAR_DOC)
async def read_tar(
    sandbox_id: str, path: Path, m: Annotated[Manager, Depends(manager)], user: User = "user"
) -> StreamingResponse:
    """Download a directory tree as a tar stream (404 file_not_found, 400 not_a_directory)."""
    chunks = await m.read_tar(sandbox_id, path, user)
    name = path.rstrip("/").rsplit("/", 1)[-1] or "root"
    return StreamingResponse(
        chunks, media_type="application/x-tar",
        headers={"Content-Disposition": f"attachment; filename*=UTF-8''{quote(name, safe='')}.tar"},
    )


MULTIPART_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {"type": "object", "properties": {
            "file": {"type": "array", "items": {"type": "string", "format": "binary"}}}}}},
        "description": "one part per file; each part's filename is its path relative to dir "
        "(subdirectories are created). Parts without a filename are ignored.",
    }
}


@router.post("/files/multipart", response_model=EntryList, openapi_extra=MULTIPART_DOC)
async def write_multipart(
    sandbox_id: str, dir: Path, request: Request, m: Annotated[Manager, Depends(manager)], user: User = "user"
) -> EntryList:
    """Upload many files in one streamed multipart/form-data request into ``dir``, all or nothing.

    A file name that is absolute, contains ``..`` or NUL, is empty or longer than 4096 characters
    fails the request with 400 invalid_request, and then no file of the request is written.
    """
    reader = MultipartReader(request.stream(), boundary_from(request.headers.get("content-type")))

    async def parts() -> AsyncIterator[tuple[str, AsyncIterator[bytes]]]:
        while (headers := await reader.next_part()) is not None:
            filename = part_filename(headers)
            if filename is not None:  # plain form fields are skipped
                yield check_relative_name(filename), reader.body()

    return EntryList(entries=[EntryInfo(**e) for e in await m.write_files(sandbox_id, dir, user, parts())])


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


WATCH_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "NDJSON: a start event, then create, write, remove, rename and chmod events "
        "({type, path, time}), and keepalive events after 10 s of silence",
        "content": {"application/x-ndjson": {}},
    }
}


@router.get("/fs/watch", responses=WATCH_DOC, response_class=StreamingResponse)
async def watch_dir(
    sandbox_id: str, path: Path, m: Annotated[Manager, Depends(manager)], recursive: bool = False,
    user: User = "user",
) -> StreamingResponse:
    """Watch a directory until the client closes the stream (which removes the watch)."""
    events = await m.watch_dir(sandbox_id, path, recursive, user)
    return StreamingResponse(ndjson(events), media_type="application/x-ndjson")


@router.post("/files/url", response_model=FileUrl)
async def file_url(
    sandbox_id: str, body: FileUrlRequest, request: Request, m: Annotated[Manager, Depends(manager)]
) -> FileUrl:
    """A URL that downloads (GET) or uploads (PUT) one file without the API key until it expires."""
    full, expires, signature = m.sign_file_url(sandbox_id, body.path, body.user, body.operation, body.expires_in)
    query = urlencode({"path": full, "user": body.user, "op": body.operation, "expires": expires,
                       "signature": signature})
    base = str(request.base_url).rstrip("/")  # the scheme and Host the client used
    return FileUrl(url=f"{base}/v1/sandboxes/{sandbox_id}/files/signed?{query}",
                   expires_at=datetime.fromtimestamp(expires, UTC))


Op = Literal["download", "upload"]
Signature = Annotated[str, Query(min_length=1, max_length=128)]


def _check_signed(m: Manager, sandbox_id: str, path: str, user: str, op: str, wanted: str, expires: int,
                  signature: str) -> None:
    if op != wanted:
        raise errors.PermissionDeniedError(f"this URL is for {op}, not {wanted}")
    m.check_file_url(sandbox_id, path, user, op, expires, signature)


@router.get(
    "/files/signed",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "the file's bytes"}},
)
async def signed_download(
    sandbox_id: str, path: Path, op: Op, expires: int, signature: Signature,
    m: Annotated[Manager, Depends(manager)], user: User = "user",
) -> StreamingResponse:
    """Download through a signed URL (no API key)."""
    _check_signed(m, sandbox_id, path, user, op, "download", expires, signature)
    chunks = await m.read_file(sandbox_id, path, user)
    return StreamingResponse(chunks, media_type="application/octet-stream")


@router.put("/files/signed", response_model=EntryInfo)
async def signed_upload(
    sandbox_id: str, path: Path, op: Op, expires: int, signature: Signature, request: Request,
    m: Annotated[Manager, Depends(manager)], user: User = "user",
) -> EntryInfo:
    """Upload through a signed URL (no API key); parents are created."""
    _check_signed(m, sandbox_id, path, user, op, "upload", expires, signature)

    async def body() -> AsyncIterator[bytes]:
        async for chunk in request.stream():
            if chunk:
                yield chunk

    return EntryInfo(**await m.write_file(sandbox_id, path, user, body()))
