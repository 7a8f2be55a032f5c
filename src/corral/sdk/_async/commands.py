"""``sandbox.commands``: run commands (streamed NDJSON), background handles, stdin, signals."""

from __future__ import annotations

import builtins
import inspect
import json
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal, overload

import httpx

from corral.errors import CommandExitError, ProcessNotFoundError, UnavailableError, error_from_body
from corral.sdk._async.client import AsyncApiClient
from corral.sdk.models import CommandResult, CommandTimeoutError, ProcessInfo

# Called with each chunk of decoded output as it arrives (an async callback is awaited).
OutputHandler = Callable[[str], Any]


async def _call(handler: OutputHandler | None, data: str) -> object:
    """Call an output handler; the coroutine of an async handler is awaited."""
    result = handler(data) if handler is not None else None
    if inspect.isawaitable(result):
        return await result
    return result


class AsyncCommandHandle:
    """A command that is running: its output so far, stdin, and ``wait()`` for the result.

    The stream is read lazily: output callbacks fire while ``wait()`` (or iteration over the
    handle, which yields ``(stdout, stderr)`` pairs with one side None) consumes it.
    """

    def __init__(
        self,
        commands: AsyncCommands,
        resp: httpx.Response,
        pid: int = 0,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
    ) -> None:
        self.pid = pid
        self.exit_code: int | None = None
        self.error: str | None = None
        self._commands = commands
        self._resp = resp
        self._lines = commands._api.iter_lines(resp)
        self._on_stdout, self._on_stderr = on_stdout, on_stderr
        self._stdout: builtins.list[str] = []
        self._stderr: builtins.list[str] = []
        self._done = False
        # Characters of output kept for .stdout/.stderr (None: all of it). A terminal left open
        # for hours keeps only its recent screenfuls; callbacks still see everything.
        self.keep: int | None = None
        self._kept = {"stdout": 0, "stderr": 0}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} pid={self.pid} exit_code={self.exit_code}>"

    @property
    def stdout(self) -> str:
        """The standard output received so far."""
        return "".join(self._stdout)

    @property
    def stderr(self) -> str:
        """The standard error received so far."""
        return "".join(self._stderr)

    def _keep(self, name: str, data: str) -> None:
        chunks = self._stdout if name == "stdout" else self._stderr
        chunks.append(data)
        self._kept[name] += len(data)
        if self.keep is not None and self._kept[name] > 2 * self.keep:  # trimmed in batches
            text = "".join(chunks)[-self.keep :]
            chunks[:] = [text]
            self._kept[name] = len(text)

    async def _next_event(self) -> dict[str, Any] | None:
        """Read and apply the next event of the stream; None once the command has ended."""
        while not self._done:
            try:
                line = await self._lines.__anext__()
            except StopAsyncIteration:
                self._done = True
                raise UnavailableError(
                    f"the output stream of process {self.pid} ended before the process did"
                ) from None
            if not line.strip():
                continue
            event = json.loads(line)
            kind = event.get("type")
            if kind == "stdout":
                self._keep("stdout", event["data"])
                await _call(self._on_stdout, event["data"])
            elif kind == "stderr":
                self._keep("stderr", event["data"])
                await _call(self._on_stderr, event["data"])
            elif kind == "start":
                self.pid = int(event["pid"])
            elif kind == "end":
                self.exit_code, self.error = int(event["exit_code"]), event.get("error")
                await self.disconnect()
            elif kind == "error" or "code" in event:
                await self.disconnect()
                raise error_from_body(500, event)
            return dict(event)
        return None

    async def wait(self) -> CommandResult:
        """Read the rest of the output (calling the handlers) and return the result.

        Raises ``CommandExitError`` on a non-zero exit code and ``corral.TimeoutError`` (a
        ``CommandTimeoutError`` with the partial output) when the command ran out of time.
        """
        await self._drain()
        return self._result()

    async def _drain(self) -> None:
        """Read the stream to its end (calling the handlers); let go of it if that fails."""
        try:
            while await self._next_event() is not None:
                pass
        finally:
            if self.exit_code is None:
                await self.disconnect()

    def _result(self) -> CommandResult:
        assert self.exit_code is not None
        stdout, stderr = self.stdout, self.stderr
        if self.error == "timeout":
            raise CommandTimeoutError(
                f"command (pid {self.pid}) ran past its timeout and was killed",
                stdout=stdout,
                stderr=stderr,
                exit_code=self.exit_code,
            )
        if self.exit_code != 0:
            raise CommandExitError(stdout, stderr, self.exit_code, self.error)
        return CommandResult(stdout, stderr, self.exit_code, self.error)

    async def __aiter__(self) -> AsyncIterator[tuple[str | None, str | None]]:
        """Yield ``(stdout, None)`` or ``(None, stderr)`` as output arrives, until the end."""
        while (event := await self._next_event()) is not None:
            if event["type"] == "stdout":
                yield event["data"], None
            elif event["type"] == "stderr":
                yield None, event["data"]

    async def disconnect(self) -> None:
        """Stop reading the output; the process keeps running (``commands.connect`` re-attaches)."""
        self._done = True
        await self._resp.aclose()

    async def kill(self) -> bool:
        """SIGKILL the process group; False when the process was already gone."""
        return await self._commands.kill(self.pid)

    async def send_stdin(self, data: str | bytes) -> None:
        await self._commands.send_stdin(self.pid, data)

    async def close_stdin(self) -> None:
        await self._commands.close_stdin(self.pid)


class AsyncCommands:
    def __init__(self, api: AsyncApiClient, sandbox_id: str) -> None:
        self._api = api
        self._base = f"/v1/sandboxes/{sandbox_id}/commands"

    @overload
    async def run(
        self,
        cmd: str,
        envs: dict[str, str] | None = ...,
        cwd: str | None = ...,
        user: str = ...,
        timeout: float | None = ...,
        stdin: bool = ...,
        background: Literal[False] = ...,
        on_stdout: OutputHandler | None = ...,
        on_stderr: OutputHandler | None = ...,
        tag: str | None = ...,
    ) -> CommandResult: ...

    @overload
    async def run(
        self,
        cmd: str,
        envs: dict[str, str] | None = ...,
        cwd: str | None = ...,
        user: str = ...,
        timeout: float | None = ...,
        stdin: bool = ...,
        *,
        background: Literal[True],
        on_stdout: OutputHandler | None = ...,
        on_stderr: OutputHandler | None = ...,
        tag: str | None = ...,
    ) -> AsyncCommandHandle: ...

    async def run(
        self,
        cmd: str,
        envs: dict[str, str] | None = None,
        cwd: str | None = None,
        user: str = "user",
        timeout: float | None = 60,
        stdin: bool = False,
        background: bool = False,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
        tag: str | None = None,
    ) -> CommandResult | AsyncCommandHandle:
        """Run ``cmd`` with a shell in the sandbox.

        Waits for it and returns a ``CommandResult`` (raising ``CommandExitError`` on a non-zero
        exit code), or with ``background=True`` returns a handle as soon as it has started.
        ``timeout`` (seconds) is enforced by the server, which kills the command.
        """
        body = {
            "cmd": cmd,
            "envs": envs or {},
            "cwd": cwd,
            "user": user,
            "timeout": timeout,
            "stdin": stdin,
            "tag": tag,
        }
        resp = await self._api.open_stream(
            "POST", self._base, json=body, read_timeout=self._api.config.stream_read_timeout
        )
        handle = AsyncCommandHandle(self, resp, on_stdout=on_stdout, on_stderr=on_stderr)
        try:
            while handle.pid == 0 and await handle._next_event() is not None:
                pass
        except BaseException:
            await handle.disconnect()
            raise
        if background:
            return handle
        return await handle.wait()

    async def connect(
        self,
        pid: int,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
    ) -> AsyncCommandHandle:
        """Re-attach to a running process: its buffered output is replayed, then live output."""
        resp = await self._api.open_stream(
            "GET", f"{self._base}/{pid}/stream", read_timeout=self._api.config.stream_read_timeout
        )
        return AsyncCommandHandle(self, resp, pid=pid, on_stdout=on_stdout, on_stderr=on_stderr)

    async def list(self) -> builtins.list[ProcessInfo]:
        """The processes running in the sandbox (started through the API)."""
        data = await self._api.request("GET", self._base)
        return [ProcessInfo.from_dict(p) for p in data["processes"]]

    async def kill(self, pid: int) -> bool:
        """SIGKILL a process and its group; False when it was already gone."""
        try:
            await self._api.request("DELETE", f"{self._base}/{pid}")
        except ProcessNotFoundError:
            return False
        return True

    async def send_stdin(self, pid: int, data: str | bytes) -> None:
        """Write to the stdin of a process started with ``stdin=True``."""
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        await self._api.request("POST", f"{self._base}/{pid}/stdin", json={"data": text})

    async def close_stdin(self, pid: int) -> None:
        """Close the stdin of a process (it reads end of file)."""
        await self._api.request("POST", f"{self._base}/{pid}/stdin/close")

    async def send_signal(self, pid: int, signal: str | int) -> None:
        """Send a signal (``"SIGTERM"`` or a number) to a process group."""
        await self._api.request("POST", f"{self._base}/{pid}/signal", json={"signal": signal})
