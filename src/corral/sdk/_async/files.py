"""``sandbox.files``: read, write (streamed both ways), list, stat, mkdir, remove, rename."""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import IO, Literal, overload

from corral.errors import FileNotFoundError_
from corral.sdk._async.client import AsyncApiClient
from corral.sdk.models import EntryInfo

CHUNK_SIZE = 1 << 20

# What ``write`` accepts: text, bytes, a binary (or text) file object, or chunks of bytes.
WriteData = str | bytes | IO[bytes] | IO[str] | Iterable[bytes] | AsyncIterable[bytes]


async def _chunks(data: WriteData) -> AsyncIterator[bytes]:
    """``data`` as a stream of byte chunks, read lazily (a file is never read whole)."""
    if isinstance(data, str):
        yield data.encode("utf-8")
    elif isinstance(data, bytes | bytearray | memoryview):
        yield bytes(data)
    elif hasattr(data, "read"):
        while chunk := data.read(CHUNK_SIZE):
            yield chunk.encode("utf-8") if isinstance(chunk, str) else chunk
    elif hasattr(data, "__aiter__"):
        async for chunk in data:
            yield chunk
    else:
        for chunk in data:
            yield chunk


class AsyncFilesystem:
    def __init__(self, api: AsyncApiClient, sandbox_id: str) -> None:
        self._api = api
        self._base = f"/v1/sandboxes/{sandbox_id}"

    @overload
    async def read(self, path: str, format: Literal["text"] = ..., user: str = ...) -> str: ...

    @overload
    async def read(self, path: str, format: Literal["bytes"], user: str = ...) -> bytes: ...

    @overload
    async def read(self, path: str, format: Literal["stream"], user: str = ...) -> AsyncIterator[bytes]: ...

    async def read(
        self, path: str, format: Literal["text", "bytes", "stream"] = "text", user: str = "user"
    ) -> str | bytes | AsyncIterator[bytes]:
        """The content of a file as text (UTF-8), bytes, or a stream of byte chunks.

        A missing file raises ``corral.FileNotFoundError`` here, before any chunk is read.
        """
        if format not in ("text", "bytes", "stream"):
            raise ValueError(f"format must be 'text', 'bytes' or 'stream', not {format!r}")
        resp = await self._api.open_stream("GET", f"{self._base}/files", params={"path": path, "user": user})
        chunks = self._api.iter_bytes(resp)
        if format == "stream":
            return chunks
        content = b"".join([chunk async for chunk in chunks])
        return content if format == "bytes" else content.decode("utf-8", "replace")

    async def write(self, path: str, data: WriteData, user: str = "user") -> EntryInfo:
        """Write a file (parents are created), streaming file objects and iterables in chunks."""
        content = bytes(data) if isinstance(data, bytes | bytearray | memoryview) else _chunks(data)
        info = await self._api.request(
            "PUT", f"{self._base}/files", params={"path": path, "user": user}, content=content
        )
        return EntryInfo.from_dict(info)

    async def list(self, path: str, depth: int = 1, user: str = "user") -> builtins.list[EntryInfo]:
        """The entries of a directory, down to ``depth`` levels."""
        data = await self._api.request(
            "GET", f"{self._base}/fs/list", params={"path": path, "depth": depth, "user": user}
        )
        return [EntryInfo.from_dict(e) for e in data["entries"]]

    async def get_info(self, path: str, user: str = "user") -> EntryInfo:
        """What is at ``path`` (not following a final symlink); ``FileNotFoundError`` if nothing."""
        data = await self._api.request("GET", f"{self._base}/fs/stat", params={"path": path, "user": user})
        return EntryInfo.from_dict(data)

    async def exists(self, path: str, user: str = "user") -> bool:
        try:
            await self.get_info(path, user=user)
        except FileNotFoundError_:
            return False
        return True

    async def make_dir(self, path: str, user: str = "user") -> bool:
        """Create a directory and its parents; False when it already existed."""
        data = await self._api.request("POST", f"{self._base}/fs/mkdir", json={"path": path, "user": user})
        return bool(data["created"])

    async def remove(self, path: str, user: str = "user") -> None:
        """Remove a file or a directory tree."""
        await self._api.request("DELETE", f"{self._base}/fs", params={"path": path, "user": user})

    async def rename(self, old_path: str, new_path: str, user: str = "user") -> EntryInfo:
        """Move ``old_path`` to ``new_path``; returns what is now at ``new_path``."""
        data = await self._api.request(
            "POST", f"{self._base}/fs/rename", json={"src": old_path, "dst": new_path, "user": user}
        )
        return EntryInfo.from_dict(data)
