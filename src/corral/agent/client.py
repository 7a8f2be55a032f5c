"""Async client of the in-sandbox agent (host side).

One unix-socket connection per request, as the protocol wants. Agent errors are raised as
the matching ``corral.errors`` class; a socket that cannot be reached, or an agent that dies
in the middle of an answer, raises ``UnavailableError("sandbox agent unreachable: ...")``.

Streams (:meth:`AgentClient.exec`, :meth:`AgentClient.connect`, :meth:`AgentClient.read_file`)
are async generators: nothing is sent before the first ``__anext__``, which raises the agent's
error if there is one. Closing a stream early (``aclose()``, or ``break`` out of ``async for``)
closes the connection only: a process keeps running and can be re-attached with ``connect``.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import os
import socket
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterable, Sequence
from typing import Any

from corral.agent import protocol as p
from corral.errors import ERRORS_BY_CODE, CorralError, UnavailableError, error_from_body

_STDIN_PIECE = 512 * 1024  # raw bytes per stdin request (base64 makes it ~683 KiB)
_EVENT_KINDS = {p.KIND_STDOUT: "stdout", p.KIND_STDERR: "stderr"}

Chunks = bytes | bytearray | memoryview | AsyncIterable[bytes] | Iterable[bytes]


def agent_error(body: Any) -> CorralError:
    """The corral.errors instance for an agent ``{"code", "message"}`` error body."""
    code = body.get("code") if isinstance(body, dict) else None
    cls = ERRORS_BY_CODE.get(code) if isinstance(code, str) else None
    if cls is None:
        return CorralError(f"agent error: {body!r}"[:500])
    return error_from_body(cls.status, body)


def _unavailable(detail: object) -> UnavailableError:
    return UnavailableError(f"sandbox agent unreachable: {detail}")


def _json_answer(kind: bytes, payload: bytes) -> dict[str, Any]:
    """An answer frame, which must be J; raises the agent's error if it is one."""
    if kind != p.KIND_JSON:
        raise _unavailable(f"expected a J frame from the agent, got {kind!r}")
    try:
        return _check(p.decode_json(payload))
    except p.ProtocolError as e:
        raise _unavailable(e) from None


def _check(answer: dict[str, Any]) -> dict[str, Any]:
    if isinstance(answer.get("error"), dict):  # an end event's "error" is a string or null
        raise agent_error(answer["error"])
    return answer


class _Connection:
    """One request's connection; translates transport failures into UnavailableError."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, data: bytes) -> None:
        try:
            self.writer.write(data)
            await self.writer.drain()
        except (ConnectionError, OSError) as e:
            raise _unavailable(e) from None

    async def frame(self) -> tuple[bytes, bytes]:
        frame = await self.frame_or_end()
        if frame is None:
            raise _unavailable("the agent closed the connection before answering")
        return frame

    async def frame_or_end(self) -> tuple[bytes, bytes] | None:
        """The next frame, or None when the agent closed the connection at a frame boundary."""
        try:
            return await p.read_frame(self.reader)
        except p.ConnectionClosed:
            return None
        except p.ProtocolError as e:
            raise _unavailable(e) from None
        except (ConnectionError, OSError) as e:
            raise _unavailable(e) from None

    async def answer(self) -> dict[str, Any]:
        """The next frame, which must be J; raises the agent's error if it is one."""
        return _json_answer(*await self.frame())

    def close(self) -> None:
        try:
            self.writer.close()
        except Exception:  # the loop may be closing: the socket goes with it
            pass


class FileDownload:
    """An opened file on its way out of the sandbox: ``size`` is known, bytes follow."""

    def __init__(self, conn: _Connection, size: int) -> None:
        self._conn: _Connection | None = conn
        self.size = size

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        conn = self._conn
        if conn is None:
            raise StopAsyncIteration
        try:
            kind, payload = await conn.frame()
            if kind == p.KIND_DATA:
                return payload
            if kind == p.KIND_END:
                raise StopAsyncIteration
            if kind == p.KIND_JSON:  # an error after the answer started (e.g. EIO)
                _check(p.decode_json(payload))
            raise _unavailable(f"unexpected frame {kind!r} in a file download")
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def __aenter__(self) -> FileDownload:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def _open_tcp(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection to an agent, with keepalives: a sandbox whose kernel died sends no
    reset, and a stream waiting on it would otherwise wait for ever (~10 s to notice)."""
    reader, writer = await asyncio.open_connection(host, port)
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (("TCP_KEEPIDLE", 5), ("TCP_KEEPINTVL", 2), ("TCP_KEEPCNT", 3)):
            if hasattr(socket, name):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
    return reader, writer


class AgentClient:
    """Talks to the agent listening on ``socket_path``: the host path of the sandbox's unix socket,
    or ``tcp:ADDRESS:PORT`` for an agent reached over the sandbox's network."""

    def __init__(self, socket_path: str | os.PathLike[str], *, connect_timeout: float = 5.0) -> None:
        self.socket_path = os.fspath(socket_path)
        self.connect_timeout = connect_timeout

    def __repr__(self) -> str:
        return f"AgentClient({self.socket_path!r})"

    # ------------------------------------------------------------------ plumbing
    async def _open(self, request: dict[str, Any]) -> _Connection:
        try:
            reader, writer = await asyncio.wait_for(self._connect(), self.connect_timeout)
        except TimeoutError:
            raise _unavailable(f"connecting to {self.socket_path} timed out") from None
        except (OSError, ValueError) as e:
            raise _unavailable(e) from None
        conn = _Connection(reader, writer)
        try:
            await conn.send(p.encode_json(request))
        except BaseException:
            conn.close()
            raise
        return conn

    def _connect(self) -> Any:
        if self.socket_path.startswith("tcp:"):
            host, _, port = self.socket_path[4:].rpartition(":")
            return _open_tcp(host, int(port))
        return asyncio.open_unix_connection(self.socket_path)

    async def _call(self, request: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        async def run() -> dict[str, Any]:
            conn = await self._open(request)
            try:
                return await conn.answer()
            finally:
                conn.close()

        if timeout is None:
            return await run()
        try:
            return await asyncio.wait_for(run(), timeout)
        except TimeoutError:
            raise _unavailable(f"no answer to {request.get('op')} within {timeout} s") from None

    async def _stream(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        conn = await self._open(request)
        try:
            while True:
                kind, payload = await conn.frame()
                name = _EVENT_KINDS.get(kind)
                if name is not None:
                    yield {"type": name, "data": payload}
                    continue
                if kind != p.KIND_JSON:
                    raise _unavailable(f"unexpected frame {kind!r} in a process stream")
                try:
                    event = _check(p.decode_json(payload))
                except p.ProtocolError as e:
                    raise _unavailable(e) from None
                yield event
                if event.get("type") == "end":
                    return
        finally:
            conn.close()

    # ------------------------------------------------------------------ sandbox
    async def ping(self, timeout: float | None = 5.0) -> dict[str, Any]:
        """``{"ok": True, "pid": N, "version": str}``."""
        return await self._call({"op": "ping"}, timeout)

    async def identity(self, identity: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """A microVM guest's own identity (hostname, sandbox_id, time, seed, resolv): its agent's
        first request after a restore."""
        return await self._call({**identity, "op": "identity"}, timeout)

    async def configure(self, envs: dict[str, str] | None = None, hostname: str | None = None) -> None:
        """Set the sandbox-wide environment every later command inherits (replaces the previous one)."""
        await self._call({"op": "configure", "envs": dict(envs or {}), "hostname": hostname})

    # ------------------------------------------------------------------ processes
    def exec(
        self,
        cmd: str,
        args: Sequence[str] = (),
        *,
        envs: dict[str, str] | None = None,
        cwd: str | None = None,
        user: str = "user",
        timeout: float | None = None,
        stdin: bool = False,
        tag: str | None = None,
        pty: dict[str, int] | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Start a process; events: start {pid}, stdout/stderr {data: bytes}, end {exit_code, error}.

        With ``pty={"cols": C, "rows": R}`` it runs on a new pseudo-terminal: all its output
        comes as stdout, ``send_stdin`` types into the terminal and ``resize`` changes its size.
        """
        request: dict[str, Any] = {
            "op": "exec",
            "cmd": cmd,
            "args": list(args),
            "envs": dict(envs or {}),
            "cwd": cwd,
            "user": user,
            "timeout": timeout,
            "stdin": stdin,
            "tag": tag,
        }
        if pty is not None:
            request["pty"] = {"cols": pty.get("cols"), "rows": pty.get("rows")}
        return self._stream(request)

    def connect(self, pid: int) -> AsyncIterator[dict[str, Any]]:
        """Re-attach: start, the output still buffered (last 1 MiB), live output, then end."""
        return self._stream({"op": "connect", "pid": pid})

    async def list(self) -> builtins.list[dict[str, Any]]:
        """Running processes: ``[{pid, cmd, args, cwd, tag, user}]``."""
        return list((await self._call({"op": "list"}))["processes"])

    async def send_stdin(self, pid: int, data: bytes) -> None:
        """Write ``data`` to the process's stdin (it must have been started with ``stdin=True``)."""
        view = memoryview(data).cast("B")
        step = _STDIN_PIECE
        for off in range(0, max(len(view), 1), step):  # J frames stay well under 1 MiB
            piece = base64.b64encode(view[off : off + step]).decode("ascii")
            await self._call({"op": "stdin", "pid": pid, "data_b64": piece})

    async def close_stdin(self, pid: int) -> None:
        await self._call({"op": "close_stdin", "pid": pid})

    async def resize(self, pid: int, cols: int, rows: int) -> None:
        """Set the window size of the terminal of a process started with ``pty`` (it gets SIGWINCH)."""
        await self._call({"op": "resize", "pid": pid, "cols": cols, "rows": rows})

    async def signal(self, pid: int, signum: int) -> None:
        """Send ``signum`` to the process group of ``pid``."""
        await self._call({"op": "signal", "pid": pid, "signal": int(signum)})

    # ------------------------------------------------------------------ files
    async def open_file(self, path: str, user: str = "user") -> FileDownload:
        """Open ``path`` for download: raises the agent's error now, streams bytes later."""
        conn = await self._open({"op": "read", "path": path, "user": user})
        try:
            answer = await conn.answer()
        except BaseException:
            conn.close()
            raise
        return FileDownload(conn, int(answer.get("size", 0)))

    async def read_file(self, path: str, user: str = "user") -> AsyncIterator[bytes]:
        """The file's bytes in chunks of up to 64 KiB (the first await raises the agent's error)."""
        download = await self.open_file(path, user)
        async with download:
            async for chunk in download:
                yield chunk

    async def read_tar(self, path: str, user: str = "user") -> AsyncIterator[bytes]:
        """The directory ``path`` as a POSIX tar stream (names relative to it; symlinks stored, not
        followed), in chunks of up to 64 KiB; the first await raises the agent's error."""
        conn = await self._open({"op": "read_tar", "path": path, "user": user})
        try:
            await conn.answer()
        except BaseException:
            conn.close()
            raise
        async with FileDownload(conn, -1) as download:
            async for chunk in download:
                yield chunk

    async def write_file(
        self, path: str, user: str, chunks: Chunks, metadata: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Upload ``chunks`` (bytes, or an (async) iterable of bytes) to ``path``; parents are created.

        Returns the EntryInfo of the written file. If the agent refuses early (permission
        denied...), the upload stops and its error is raised without sending everything.
        ``metadata`` (keys of letters, digits, ``._-``) replaces the file's metadata, kept in its
        ``user.e2b.<key>`` extended attributes and listed in EntryInfo ``metadata`` when it has any.
        """
        request: dict[str, Any] = {"op": "write", "path": path, "user": user}
        if metadata is not None:
            request["metadata"] = metadata
        conn = await self._open(request)
        answer_task: asyncio.Task[tuple[bytes, bytes]] = asyncio.ensure_future(conn.frame())
        try:
            try:
                async for chunk in _aiter_chunks(chunks):
                    if answer_task.done():
                        break
                    view = memoryview(chunk).cast("B")
                    for off in range(0, len(view), p.MAX_DATA_FRAME):
                        piece = view[off : off + p.MAX_DATA_FRAME]
                        conn.writer.write(p.header(p.KIND_DATA, len(piece)))
                        conn.writer.write(piece)
                    await conn.writer.drain()
                conn.writer.write(p.encode_frame(p.KIND_END))
                await conn.writer.drain()
            except (ConnectionError, OSError):
                pass  # the agent stopped reading: its answer says why
            return _json_answer(*await answer_task)
        finally:
            if not answer_task.done():
                answer_task.cancel()
            conn.close()

    async def list_dir(self, path: str, depth: int = 1, user: str = "user") -> builtins.list[dict[str, Any]]:
        """EntryInfo of the entries under ``path`` (depth 1 = direct children), depth-first by name."""
        answer = await self._call({"op": "list_dir", "path": path, "depth": depth, "user": user})
        return list(answer["entries"])

    async def stat(self, path: str, user: str = "user") -> dict[str, Any]:
        """EntryInfo of ``path`` (symlinks are not followed)."""
        return await self._call({"op": "stat", "path": path, "user": user})

    async def mkdir(self, path: str, user: str = "user") -> bool:
        """Create ``path`` and its parents; False if it already was a directory."""
        return bool((await self._call({"op": "mkdir", "path": path, "user": user}))["created"])

    async def remove(self, path: str, user: str = "user") -> None:
        """Remove a file, a symlink or a whole directory tree."""
        await self._call({"op": "remove", "path": path, "user": user})

    async def rename(self, src: str, dst: str, user: str = "user") -> dict[str, Any]:
        """Rename ``src`` to ``dst``; returns the EntryInfo of ``dst``."""
        return await self._call({"op": "rename", "src": src, "dst": dst, "user": user})

    async def watch(self, path: str, recursive: bool = False, user: str = "user") -> AsyncIterator[dict[str, Any]]:
        """Watch a directory: ``{"type": "start"}`` once watching (the first item raises the agent's
        error), then ``{"type": "create"|"write"|"remove"|"rename"|"chmod", "path", "time"}`` events
        until the stream is closed (which removes the watch) or the agent goes away (the end)."""
        conn = await self._open({"op": "watch", "path": path, "recursive": recursive, "user": user})
        started = False
        try:
            while True:
                try:
                    kind, payload = await conn.frame()
                except UnavailableError:
                    if started:
                        return  # the sandbox stopped: the watch ended with it
                    raise
                event = _json_answer(kind, payload)
                started = True
                yield event
        finally:
            conn.close()


    # ------------------------------------------------------------------ code interpreter
    async def code(self, request: dict[str, Any]) -> AsyncGenerator[dict[str, Any], None]:
        """Relay a request to the sandbox's code interpreter (``daemon/kernel_server``): its
        answer lines. The first item raises the interpreter's error if there is one; closing
        the stream early interrupts a running cell."""
        conn = await self._open({"op": "code", "request": request})
        try:
            while (frame := await conn.frame_or_end()) is not None:
                yield _json_answer(*frame)
        finally:
            conn.close()

    async def code_call(self, request: dict[str, Any]) -> dict[str, Any]:
        """A code-interpreter request with one answer (contexts: list, create, restart, remove)."""
        stream = self.code(request)
        try:
            async for answer in stream:
                return answer
        finally:
            await stream.aclose()
        raise _unavailable("the code interpreter did not answer")


async def _aiter_chunks(chunks: Chunks) -> AsyncIterator[bytes | bytearray | memoryview]:
    if isinstance(chunks, bytes | bytearray | memoryview):
        if len(chunks):
            yield chunks
        return
    if isinstance(chunks, AsyncIterable):
        async for chunk in chunks:
            if len(chunk):
                yield chunk
        return
    for chunk in chunks:
        if len(chunk):
            yield chunk
