"""``sandbox.pty``: interactive terminals (a login shell, or a full-screen program, on a pty)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from corral.sdk._async.client import AsyncApiClient
from corral.sdk._async.commands import AsyncCommandHandle, AsyncCommands, OutputHandler
from corral.sdk.models import CommandResult, PtySize

PTY_KEEP = 1 << 20  # characters of terminal output a handle keeps (on_data sees all of it)

class AsyncPtyHandle:
    """A running terminal: its output so far, keystrokes, resizing, and ``wait()`` for its end.

    The stream is read lazily: ``on_data`` fires while ``wait()`` (or iteration over the
    handle, which yields the output as text as it arrives) consumes it.
    """

    def __init__(self, pty: AsyncPty, handle: AsyncCommandHandle) -> None:
        self._pty = pty
        self._handle = handle

    def __repr__(self) -> str:
        return f"<{type(self).__name__} pid={self.pid} exit_code={self.exit_code}>"

    @property
    def pid(self) -> int:
        return self._handle.pid

    @property
    def exit_code(self) -> int | None:
        return self._handle.exit_code

    @property
    def error(self) -> str | None:
        """``"killed"`` (died of a signal), ``"timeout"`` or None, once ended."""
        return self._handle.error

    @property
    def output(self) -> str:
        """The terminal output received so far (escape sequences included)."""
        return self._handle.stdout

    async def wait(self) -> CommandResult:
        """Read the rest of the output (calling ``on_data``) and return the result.

        Unlike ``commands.run``, a non-zero exit code or a kill does not raise: the result's
        ``exit_code`` and ``error`` tell. ``stdout`` holds the whole terminal output.
        """
        handle = self._handle
        await handle._drain()
        assert handle.exit_code is not None
        return CommandResult(handle.stdout, "", handle.exit_code, handle.error)

    async def __aiter__(self) -> AsyncIterator[str]:
        """Yield the terminal output as it arrives, until the end."""
        while (event := await self._handle._next_event()) is not None:
            if event["type"] == "stdout":
                yield event["data"]

    async def disconnect(self) -> None:
        """Stop reading the output; the terminal goes on (``pty.connect`` re-attaches)."""
        await self._handle.disconnect()

    async def kill(self) -> bool:
        """SIGKILL the terminal's process group; False when it was already gone."""
        return await self._pty.kill(self.pid)

    async def send_stdin(self, data: str | bytes) -> None:
        """Type into the terminal (``"\\r"`` is Enter, ``"\\x03"`` Ctrl-C)."""
        await self._pty.send_stdin(self.pid, data)

    async def resize(self, cols: int, rows: int) -> None:
        await self._pty.resize(self.pid, cols, rows)


class AsyncPty:
    def __init__(self, api: AsyncApiClient, sandbox_id: str) -> None:
        self._api = api
        self._base = f"/v1/sandboxes/{sandbox_id}/pty"
        self._commands = AsyncCommands(api, sandbox_id)

    async def create(
        self,
        size: PtySize | None = None,
        on_data: OutputHandler | None = None,
        *,
        cols: int = 80,
        rows: int = 24,
        cwd: str | None = None,
        envs: dict[str, str] | None = None,
        user: str = "user",
        timeout: float | None = None,
        cmd: str | None = None,
    ) -> AsyncPtyHandle:
        """Start a terminal of ``size`` (or ``cols`` x ``rows``): an interactive login bash, or ``cmd`` (a
        command line run with ``bash -l -c``). Returns as soon as it has started.

        ``timeout`` (seconds, default none) is enforced by the server, which kills the terminal.
        """
        if size is not None:  # E2B's spelling: pty.create(PtySize(rows=24, cols=80), ...)
            cols, rows = size.cols, size.rows
        body: dict[str, Any] = {
            "cols": cols,
            "rows": rows,
            "cmd": cmd,
            "envs": envs or {},
            "cwd": cwd,
            "user": user,
            "timeout": timeout,
        }
        resp = await self._api.open_stream(
            "POST", self._base, json=body, read_timeout=self._api.config.stream_read_timeout
        )
        handle = AsyncCommandHandle(self._commands, resp, on_stdout=on_data)
        handle.keep = PTY_KEEP
        try:
            while handle.pid == 0 and await handle._next_event() is not None:
                pass
        except BaseException:
            await handle.disconnect()
            raise
        return AsyncPtyHandle(self, handle)

    async def connect(self, pid: int, on_data: OutputHandler | None = None) -> AsyncPtyHandle:
        """Re-attach to a terminal: its buffered output is replayed, then live output."""
        handle = await self._commands.connect(pid, on_stdout=on_data)
        handle.keep = PTY_KEEP
        return AsyncPtyHandle(self, handle)

    async def send_stdin(self, pid: int, data: str | bytes) -> None:
        """Type into the terminal of ``pid``."""
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        await self._api.request("POST", f"{self._base}/{pid}/input", json={"data": text})

    async def resize(self, pid: int, cols: int, rows: int) -> None:
        """Change the size of the terminal of ``pid`` (its programs get SIGWINCH)."""
        await self._api.request("POST", f"{self._base}/{pid}/resize", json={"cols": cols, "rows": rows})

    async def kill(self, pid: int) -> bool:
        """SIGKILL the terminal's process group; False when it was already gone."""
        return await self._commands.kill(pid)
