"""envd's plain HTTP ``/files``: download (GET) and upload (POST, multipart or octet-stream),
authorized by the sandbox's access token or by a v1 signature in the query (presigned URLs)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import posixpath
import re
import time
import zlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, quote

from ... import errors
from ...manager import Manager
from ...server.multipart import MultipartReader, boundary_from, part_filename
from .asgi import Scope, body_chunks, send_json
from .filesystem import absolute
from .process import USER_RE

OPS = {"GET": "read", "POST": "write"}
FIELD_NAME = re.compile(r"""(?:^|;)\s*name\s*=\s*"?file"?\s*(?:;|$)""", re.IGNORECASE)


def signature(path: str, op: str, username: str, token: str, expiration: int | None) -> str:
    """envd's v1 file URL signature: sha256 over path, operation, user, token (and expiry)."""
    raw = f"{path}:{op}:{username}:{token}" + ("" if expiration is None else f":{expiration}")
    return "v1_" + base64.b64encode(hashlib.sha256(raw.encode()).digest()).rstrip(b"=").decode("ascii")


def query_of(scope: Scope) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(scope.get("query_string", b"").decode("latin-1")).items()}


def check_signature(query: dict[str, str], method: str, token: str) -> str:
    """``"ok"`` if the query's signature grants ``method`` on its path with this sandbox's token,
    ``"expired"`` if it did until its expiry passed, else ``"invalid"``."""
    given = query.get("signature")
    if not given or method not in OPS:
        return "invalid"
    expiration: int | None = None
    if query.get("signature_expiration"):
        try:
            expiration = int(query["signature_expiration"])
        except ValueError:
            return "invalid"
    expected = signature(query.get("path", ""), OPS[method], query.get("username", ""), token, expiration)
    # SECURITY: constant-time comparison; an expired URL grants nothing.
    if not hmac.compare_digest(expected.encode(), given.encode("utf-8", "surrogateescape")):
        return "invalid"
    return "ok" if expiration is None or expiration >= time.time() else "expired"


EXPIRED = {"code": 401, "message": "signature is already expired"}


class FilesHandler:
    def __init__(self, manager: Manager) -> None:
        self.m = manager

    async def __call__(self, sandbox_id: str, scope: Scope, receive: Any, send: Any) -> None:
        query = query_of(scope)
        try:
            user = query.get("username") or "user"
            if not USER_RE.fullmatch(user) or len(user) > 32:
                raise errors.AuthenticationError(f"invalid user {user[:40]!r}")
            if scope["method"] == "GET":
                return await self._download(sandbox_id, query, user, scope, send)
            if scope["method"] == "POST":
                return await self._upload(sandbox_id, query, user, scope, receive, send)
            raise errors.InvalidRequestError(f"method {scope['method']} is not allowed on /files")
        except errors.CorralError as err:
            await send_json(send, *envd_error(err))

    async def _download(self, sandbox_id: str, query: dict[str, str], user: str, scope: Scope, send: Any) -> None:
        if not query.get("path"):
            raise errors.InvalidRequestError("the path query parameter is required")
        path = absolute(query["path"], user)
        chunks = await self.m.read_file(sandbox_id, path, user)
        name = quote(posixpath.basename(path) or "file", safe="")
        try:
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"application/octet-stream"),
                (b"content-disposition", f"inline; filename*=UTF-8''{name}".encode()),
            ]})
            async for chunk in chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]

    async def _upload(
        self, sandbox_id: str, query: dict[str, str], user: str, scope: Scope, receive: Any, send: Any
    ) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        # X-Metadata-<Key>: <value> replaces the metadata of every file the request writes.
        metadata = {k[len("x-metadata-") :]: v for k, v in headers.items() if k.startswith("x-metadata-")} or None
        body = body_chunks(receive)
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding == "gzip":
            body = _gunzip(body)
        elif encoding not in ("identity", ""):
            raise errors.InvalidRequestError(f"unsupported content encoding {encoding!r}")
        written: list[dict[str, Any]] = []
        content_type = headers.get("content-type", "")
        if content_type.split(";")[0].strip().lower() == "multipart/form-data":
            reader = MultipartReader(body, boundary_from(content_type))
            while (part := await reader.next_part()) is not None:
                filename = part_filename(part)
                if filename is None or not FIELD_NAME.search(part.get("content-disposition", "")):
                    continue  # not a file part
                target = query.get("path") or filename
                written.append(await self._write(sandbox_id, target, user, reader.body(), metadata))
        else:
            if not query.get("path"):
                raise errors.InvalidRequestError("the path query parameter is required for a raw upload")
            written.append(await self._write(sandbox_id, query["path"], user, body, metadata))
        if not written:
            raise errors.InvalidRequestError("no file in the request (multipart parts named 'file')")
        await send_json(send, 200, written)

    async def _write(
        self, sandbox_id: str, target: str, user: str, chunks: AsyncIterator[bytes], metadata: dict[str, str] | None
    ) -> dict[str, Any]:
        if not target or "\0" in target or len(target) > 4096:
            raise errors.InvalidRequestError("a file path must be 1-4096 characters without NUL bytes")
        info = await self.m.write_file(sandbox_id, absolute(target, user), user, chunks, metadata)
        out = {"name": info["name"], "type": "file", "path": info["path"]}
        if info.get("metadata"):
            out["metadata"] = info["metadata"]
        return out


async def _gunzip(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    inflater = zlib.decompressobj(wbits=31)
    try:
        async for chunk in chunks:
            out = inflater.decompress(chunk)
            if out:
                yield out
        tail = inflater.flush()
    except zlib.error:
        raise errors.InvalidRequestError("the gzip body is corrupt") from None
    if tail:
        yield tail


def envd_error(err: errors.CorralError) -> tuple[int, dict[str, Any]]:
    """(status, body) of an envd HTTP error: ``{"code": <status>, "message"}``."""
    if isinstance(err, errors.SandboxNotRunningError | errors.SandboxNotFoundError):
        return 502, {"code": 502, "message": "The sandbox was not found", "detail": err.message}
    if isinstance(err, errors.NotADirectoryError_ | errors.IsADirectoryError_):
        status = 400
    elif isinstance(err, errors.PayloadTooLargeError):
        status = 413
    elif isinstance(err, errors.LimitExceededError) and "space" in err.message:
        status = 507
    else:
        status = err.status
    return status, {"code": status, "message": err.message}
