# generated from _async by scripts/gen_sync.py, do not edit
"""``sandbox.files``: read, write (streamed both ways), list, stat, mkdir, remove, rename, watch_dir,
and signed download/upload URLs."""

from __future__ import annotations

import builtins
import inspect
import json
import os
import secrets
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, Literal, overload
from urllib.parse import quote

import httpx

from corral.errors import CorralError, FileNotFoundError_, UnavailableError, error_from_body
from corral.sdk import _tar
from corral.sdk._sync.client import ApiClient
from corral.sdk.models import EntryInfo, FilesystemEvent

CHUNK_SIZE = 1 << 20

# What ``write`` accepts: text, bytes, a binary (or text) file object, or chunks of bytes.
WriteData = str | bytes | IO[bytes] | IO[str] | Iterable[bytes] | Iterable[bytes]


def _chunks(data: WriteData) -> Iterator[bytes]:
    """``data`` as a stream of byte chunks, read lazily (a file is never read whole)."""
    if isinstance(data, str):
        yield data.encode("utf-8")
    elif isinstance(data, bytes | bytearray | memoryview):
        yield bytes(data)
    elif hasattr(data, "read"):
        while chunk := data.read(CHUNK_SIZE):
            yield chunk.encode("utf-8") if isinstance(chunk, str) else chunk
    elif hasattr(data, "__iter__"):
        for chunk in data:
            yield chunk
    else:
        for chunk in data:
            yield chunk


def _multipart(items: builtins.list[tuple[str, WriteData | Path]], boundary: str) -> Iterator[bytes]:
    """A multipart/form-data body, one part per file, its filename the relative path; a Path is
    opened when its turn comes (an upload of a whole tree keeps one file open at a time)."""
    for name, data in items:
        encoded = quote(name, safe="/")
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{encoded}"; '
            f"filename*=UTF-8''{encoded}\r\nContent-Type: application/octet-stream\r\n\r\n"
        ).encode("ascii")
        if isinstance(data, Path):
            with open(data, "rb") as f:
                for chunk in _chunks(f):
                    yield chunk
        else:
            for chunk in _chunks(data):
                yield chunk
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode("ascii")


def _local_files(local_dir: str | os.PathLike[str]) -> builtins.list[tuple[str, WriteData | Path]]:
    """(relative POSIX name, path) of every regular file under ``local_dir``, by name; symlinks
    are not followed."""
    root = Path(local_dir)
    if not root.is_dir():
        raise NotADirectoryError(f"not a directory: {root}")
    found: builtins.list[tuple[str, WriteData | Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath, name)
            if path.is_file() and not path.is_symlink():
                found.append((path.relative_to(root).as_posix(), path))
    return found


# Called with each FilesystemEvent of a watch (an async callback is awaited).
EventHandler = Callable[[FilesystemEvent], Any]
EVENT_TYPES = frozenset({"create", "write", "remove", "rename", "chmod"})


def _notify(handler: EventHandler | None, event: FilesystemEvent) -> object:
    """Call an event handler; the coroutine of an async handler is awaited."""
    result = handler(event) if handler is not None else None
    if inspect.isawaitable(result):
        return result
    return result


class WatchHandle:
    """A directory being watched. Iterate over it for :class:`FilesystemEvent` objects (read
    lazily from the stream); ``stop()`` ends the watch (the sandbox removes it)."""

    def __init__(self, api: ApiClient, resp: httpx.Response, on_event: EventHandler | None = None) -> None:
        self._resp = resp
        self._lines = api.iter_lines(resp)
        self._on_event = on_event
        self._stopped = False

    def _event(self) -> dict[str, Any] | None:
        """The next event of the stream (keepalives skipped); None when it ended or was stopped."""
        while not self._stopped:
            try:
                line = self._lines.__next__()
            except StopIteration:
                self._stopped = True
                return None
            except CorralError:
                if self._stopped:  # stop() closed the stream under a read
                    return None
                raise
            if not line.strip():
                continue
            event = json.loads(line)
            if "code" in event:
                self.stop()
                raise error_from_body(500, event)
            if event.get("type") != "keepalive":
                return dict(event)
        return None

    def _wait_started(self) -> None:
        event = self._event()
        if event is None or event.get("type") != "start":
            self.stop()
            raise UnavailableError(f"the watch stream did not start (got {event!r})")

    def __iter__(self) -> WatchHandle:
        return self

    def __next__(self) -> FilesystemEvent:
        while (event := self._event()) is not None:
            if event.get("type") in EVENT_TYPES:
                return FilesystemEvent.from_dict(event)
        raise StopIteration

    def run(self) -> None:
        """Call the ``on_event`` handler with each event until ``stop()`` (the handler may call
        it) or the end of the sandbox."""
        for event in self:
            _notify(self._on_event, event)

    def stop(self) -> None:
        """Stop watching (closes the stream; the watch is removed inside the sandbox)."""
        self._stopped = True
        self._resp.close()

    def __enter__(self) -> WatchHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Filesystem:
    def __init__(self, api: ApiClient, sandbox_id: str) -> None:
        self._api = api
        self._base = f"/v1/sandboxes/{sandbox_id}"

    @overload
    def read(self, path: str, format: Literal["text"] = ..., user: str = ...) -> str: ...

    @overload
    def read(self, path: str, format: Literal["bytes"], user: str = ...) -> bytes: ...

    @overload
    def read(self, path: str, format: Literal["stream"], user: str = ...) -> Iterator[bytes]: ...

    def read(
        self, path: str, format: Literal["text", "bytes", "stream"] = "text", user: str = "user"
    ) -> str | bytes | Iterator[bytes]:
        """The content of a file as text (UTF-8), bytes, or a stream of byte chunks.

        A missing file raises ``corral.FileNotFoundError`` here, before any chunk is read.
        """
        if format not in ("text", "bytes", "stream"):
            raise ValueError(f"format must be 'text', 'bytes' or 'stream', not {format!r}")
        resp = self._api.open_stream("GET", f"{self._base}/files", params={"path": path, "user": user})
        chunks = self._api.iter_bytes(resp)
        if format == "stream":
            return chunks
        content = b"".join([chunk for chunk in chunks])
        return content if format == "bytes" else content.decode("utf-8", "replace")

    def write(self, path: str, data: WriteData, user: str = "user") -> EntryInfo:
        """Write a file (parents are created), streaming file objects and iterables in chunks."""
        content = bytes(data) if isinstance(data, bytes | bytearray | memoryview) else _chunks(data)
        info = self._api.request(
            "PUT", f"{self._base}/files", params={"path": path, "user": user}, content=content
        )
        return EntryInfo.from_dict(info)

    def write_files(
        self,
        files: Mapping[str, WriteData] | Iterable[tuple[str, WriteData]],
        dir: str = ".",
        user: str = "user",
    ) -> builtins.list[EntryInfo]:
        """Write many files in one streamed multipart request. Each name is a path relative to
        ``dir`` (default: the user's home; subdirectories are created); absolute names and
        ``..`` are refused (``InvalidRequestError``). Returns the EntryInfo of each file written."""
        items: builtins.list[tuple[str, WriteData | Path]] = list(
            files.items() if isinstance(files, Mapping) else files
        )
        return self._multipart_upload(items, dir, user)

    def upload_dir(
        self, local_dir: str | os.PathLike[str], remote_dir: str, user: str = "user"
    ) -> builtins.list[EntryInfo]:
        """Upload every regular file under ``local_dir`` into ``remote_dir`` in one streamed
        multipart request (symlinks and empty directories are left out)."""
        return self._multipart_upload(_local_files(local_dir), remote_dir, user)

    def _multipart_upload(
        self, items: builtins.list[tuple[str, WriteData | Path]], dir: str, user: str
    ) -> builtins.list[EntryInfo]:
        boundary = "corral-" + secrets.token_hex(16)
        data = self._api.request(
            "POST",
            f"{self._base}/files/multipart",
            params={"dir": dir, "user": user},
            content=_multipart(items, boundary),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        return [EntryInfo.from_dict(e) for e in data["entries"]]

    def download_dir(
        self, remote_dir: str, local_dir: str | os.PathLike[str], user: str = "user"
    ) -> builtins.list[str]:
        """Download the directory ``remote_dir`` (a tar stream, spooled to a temporary file, not
        memory) and extract it safely under ``local_dir`` (created): nothing is written outside
        it and symlinks pointing outside it are skipped. Returns the local paths written.
        A missing directory raises ``corral.FileNotFoundError`` before anything is written."""
        resp = self._api.open_stream(
            "GET",
            f"{self._base}/files/tar",
            params={"path": remote_dir, "user": user},
            read_timeout=self._api.config.stream_read_timeout,
        )
        with tempfile.TemporaryFile() as spool:
            for chunk in self._api.iter_bytes(resp):
                spool.write(chunk)
            spool.seek(0)
            return _tar.extract(spool, os.fspath(local_dir))

    def list(self, path: str, depth: int = 1, user: str = "user") -> builtins.list[EntryInfo]:
        """The entries of a directory, down to ``depth`` levels."""
        data = self._api.request(
            "GET", f"{self._base}/fs/list", params={"path": path, "depth": depth, "user": user}
        )
        return [EntryInfo.from_dict(e) for e in data["entries"]]

    def get_info(self, path: str, user: str = "user") -> EntryInfo:
        """What is at ``path`` (not following a final symlink); ``FileNotFoundError`` if nothing."""
        data = self._api.request("GET", f"{self._base}/fs/stat", params={"path": path, "user": user})
        return EntryInfo.from_dict(data)

    def exists(self, path: str, user: str = "user") -> bool:
        try:
            self.get_info(path, user=user)
        except FileNotFoundError_:
            return False
        return True

    def make_dir(self, path: str, user: str = "user") -> bool:
        """Create a directory and its parents; False when it already existed."""
        data = self._api.request("POST", f"{self._base}/fs/mkdir", json={"path": path, "user": user})
        return bool(data["created"])

    def remove(self, path: str, user: str = "user") -> None:
        """Remove a file or a directory tree."""
        self._api.request("DELETE", f"{self._base}/fs", params={"path": path, "user": user})

    def rename(self, old_path: str, new_path: str, user: str = "user") -> EntryInfo:
        """Move ``old_path`` to ``new_path``; returns what is now at ``new_path``."""
        data = self._api.request(
            "POST", f"{self._base}/fs/rename", json={"src": old_path, "dst": new_path, "user": user}
        )
        return EntryInfo.from_dict(data)

    def watch_dir(
        self, path: str, recursive: bool = False, on_event: EventHandler | None = None, user: str = "user"
    ) -> WatchHandle:
        """Watch a directory (and its subdirectories, new ones too, when ``recursive``).

        Returns once the watch is in place: every later change is reported. Iterate over the
        handle for events, or pass ``on_event`` and call ``handle.run()``; ``stop()`` ends it.
        A missing directory raises ``corral.FileNotFoundError`` here.
        """
        params = {"path": path, "recursive": "true" if recursive else "false", "user": user}
        resp = self._api.open_stream(
            "GET", f"{self._base}/fs/watch", params=params, read_timeout=self._api.config.stream_read_timeout
        )
        handle = WatchHandle(self._api, resp, on_event)
        handle._wait_started()
        return handle

    def _url(self, path: str, operation: str, expires_in: int, user: str) -> str:
        data = self._api.request(
            "POST",
            f"{self._base}/files/url",
            json={"path": path, "user": user, "operation": operation, "expires_in": expires_in},
        )
        return str(data["url"])

    def download_url(self, path: str, expires_in: int = 3600, user: str = "user") -> str:
        """A URL that downloads ``path`` with a plain GET, no API key, for ``expires_in`` seconds."""
        return self._url(path, "download", expires_in, user)

    def upload_url(self, path: str, expires_in: int = 3600, user: str = "user") -> str:
        """A URL that writes ``path`` with a plain PUT of the bytes, no API key, for ``expires_in`` seconds."""
        return self._url(path, "upload", expires_in, user)
