"""A small streaming multipart/form-data reader (RFC 7578): parts come one at a time, each body
as a stream of chunks, so an upload of many files never sits in memory whole.

    reader = MultipartReader(request.stream(), boundary_from(content_type))
    while (headers := await reader.next_part()) is not None:
        async for chunk in reader.body():
            ...

Malformed input raises ``corral.errors.InvalidRequestError``.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import AsyncIterator
from urllib.parse import unquote

from .. import errors

MAX_HEADERS = 16 * 1024  # bytes of one part's header block
MAX_PARTS = 100_000
MAX_NAME = 4096


def _bad(message: str) -> errors.InvalidRequestError:
    return errors.InvalidRequestError(message)


_BOUNDARY_RE = re.compile(r"""boundary=(?:"([^"]{1,70})"|([^\s;"]{1,70}))""", re.IGNORECASE)


def boundary_from(content_type: str | None) -> bytes:
    """The boundary of a ``multipart/form-data`` content type (400 if it is something else)."""
    if not content_type or content_type.split(";", 1)[0].strip().lower() != "multipart/form-data":
        raise _bad("the body must be multipart/form-data")
    m = _BOUNDARY_RE.search(content_type)
    if m is None:
        raise _bad("multipart/form-data without a boundary")
    return (m.group(1) or m.group(2)).encode("latin-1")


class MultipartReader:
    def __init__(self, stream: AsyncIterator[bytes], boundary: bytes) -> None:
        self._stream = stream.__aiter__()
        self._delim = b"\r\n--" + boundary
        self._buf = bytearray(b"\r\n")  # so that the first delimiter looks like every other one
        self._eof = False
        self._in_body = False
        self._started = False
        self._done = False
        self._parts = 0

    async def _more(self) -> bool:
        if self._eof:
            return False
        try:
            chunk = await self._stream.__anext__()
        except StopAsyncIteration:
            self._eof = True
            return False
        self._buf += chunk
        return True

    async def _need(self, n: int) -> None:
        while len(self._buf) < n:
            if not await self._more():
                raise _bad("truncated multipart body")

    async def next_part(self) -> dict[str, str] | None:
        """The headers of the next part (names lower-cased), or None after the last one."""
        if self._done:
            return None
        if self._in_body:
            async for _ in self.body():  # skip what the caller did not read
                pass
        if not self._started:  # skip the preamble up to the first delimiter
            while (i := self._buf.find(self._delim)) < 0:
                del self._buf[: max(0, len(self._buf) - len(self._delim))]
                if not await self._more():
                    raise _bad("no multipart boundary found in the body")
            del self._buf[: i + len(self._delim)]
            self._started = True
        await self._need(2)
        if self._buf[:2] == b"--":
            self._done = True
            return None
        while (end := self._buf.find(b"\r\n\r\n")) < 0:  # the header block (after the delimiter line)
            if len(self._buf) > MAX_HEADERS:
                raise _bad("multipart part headers too large")
            if not await self._more():
                raise _bad("truncated multipart body")
        if end > MAX_HEADERS:
            raise _bad("multipart part headers too large")
        block = bytes(self._buf[:end])
        del self._buf[: end + 4]
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise _bad(f"more than {MAX_PARTS} parts")
        first, _, rest = block.partition(b"\r\n")  # the rest of the delimiter line: padding only
        if first.strip(b" \t"):
            raise _bad("malformed multipart delimiter line")
        headers: dict[str, str] = {}
        for line in rest.split(b"\r\n"):
            if not line:
                continue
            name, sep, value = line.partition(b":")
            if not sep:
                raise _bad("malformed multipart header line")
            try:
                headers[name.strip().decode("ascii").lower()] = value.strip().decode("utf-8")
            except UnicodeDecodeError:
                raise _bad("multipart headers must be UTF-8") from None
        self._in_body = True
        return headers

    async def body(self) -> AsyncIterator[bytes]:
        """The current part's bytes, chunk by chunk, up to the next delimiter."""
        keep = len(self._delim) - 1
        while self._in_body:
            i = self._buf.find(self._delim)
            if i >= 0:
                data = bytes(self._buf[:i])
                del self._buf[: i + len(self._delim)]
                self._in_body = False
                if data:
                    yield data
                return
            if len(self._buf) > keep:  # all but a possible beginning of the delimiter
                data = bytes(self._buf[: len(self._buf) - keep])
                del self._buf[: len(data)]
                yield data
            if not await self._more():
                raise _bad("truncated multipart body")


def _param(header: str, key: str) -> str | None:
    """A parameter of a Content-Disposition value: quoted (backslash escapes), token, or
    RFC 5987 ``key*=UTF-8''percent-encoded`` (preferred when both are given)."""
    ext = re.search(rf"""(?:^|;)\s*{key}\*\s*=\s*([^;]*)""", header, re.IGNORECASE)
    if ext is not None:
        charset, _, encoded = ext.group(1).strip().partition("''")
        if charset.lower() in ("utf-8", "") and encoded:
            return unquote(encoded, encoding="utf-8", errors="strict")
    m = re.search(rf"""(?:^|;)\s*{key}\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]*))""", header, re.IGNORECASE)
    if m is None:
        return None
    if m.group(1) is not None:
        return re.sub(r"\\(.)", r"\1", m.group(1))
    return m.group(2)


def part_filename(headers: dict[str, str]) -> str | None:
    """The filename of a file part (None for a plain form field)."""
    disposition = headers.get("content-disposition", "")
    if not disposition.lower().startswith("form-data"):
        raise _bad("each part needs Content-Disposition: form-data")
    try:
        return _param(disposition, "filename")
    except UnicodeDecodeError:
        raise _bad("the filename is not valid UTF-8") from None


def check_relative_name(name: str) -> str:
    """A file part's name as a safe relative path (no absolute path, no ``..``, no NUL), or 400."""
    if not name or len(name) > MAX_NAME:
        raise _bad(f"file names must be 1-{MAX_NAME} characters: {name[:100]!r}")
    if "\0" in name:
        raise _bad("file names must not contain NUL bytes")
    if name.startswith("/"):
        raise _bad(f"file names must be relative: {name[:100]!r}")
    parts = name.split("/")
    if ".." in parts:
        raise _bad(f"file names must not contain '..': {name[:100]!r}")
    clean = posixpath.normpath(name)
    if clean in (".", "") or name.endswith("/") or clean.startswith("../") or clean.startswith("/"):
        raise _bad(f"not a file name: {name[:100]!r}")
    return clean
