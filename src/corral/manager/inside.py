"""What runs inside a running sandbox: commands, PTYs, files and code cells, each a call to its agent.

``InsideSandbox`` is a part of ``Manager`` (``service.py``): its methods need only ``_running``,
which checks that the sandbox runs and returns its ``Live`` (agent client, template workdir).
"""

from __future__ import annotations

import builtins
import logging
import secrets
from collections.abc import AsyncIterable, AsyncIterator
from typing import TYPE_CHECKING, Any

from .. import errors
from ..schema import RunCode, RunCommand
from . import metrics

if TYPE_CHECKING:
    from .service import Live

log = logging.getLogger("corral.manager")


class InsideSandbox:
    def _running(self, sandbox_id: str) -> Live:
        raise NotImplementedError

    # ----------------------------------------------------------------- commands

    async def run_command(self, sandbox_id: str, req: RunCommand) -> AsyncIterator[dict[str, Any]]:
        lv = self._running(sandbox_id)
        metrics.COMMANDS.inc()
        stream = lv.agent.exec(
            cmd="/bin/bash",
            args=["-l", "-c", req.cmd],
            envs=req.envs,
            cwd=req.cwd or lv.workdir,
            user=req.user,
            timeout=req.timeout or None,
            stdin=req.stdin,
            tag=req.tag,
        )
        return await started(stream)

    async def start_pty(
        self,
        sandbox_id: str,
        cols: int,
        rows: int,
        cmd: str = "/bin/bash",
        args: builtins.list[str] | None = None,
        envs: dict[str, str] | None = None,
        cwd: str | None = None,
        user: str = "user",
        timeout: float | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Start ``cmd`` (an interactive login bash by default) on a ``cols`` x ``rows`` terminal.

        The events are those of ``run_command``; the terminal's output is all stdout. Input goes
        through ``send_stdin``, killing through ``signal_command``.
        """
        check_size(cols, rows)
        lv = self._running(sandbox_id)
        metrics.COMMANDS.inc()
        stream = lv.agent.exec(
            cmd=cmd,
            args=["-i", "-l"] if args is None else args,
            envs=envs,
            cwd=cwd,
            user=user,
            timeout=timeout or None,
            pty={"cols": cols, "rows": rows},
        )
        return await started(stream)

    async def start_process(
        self,
        sandbox_id: str,
        cmd: str,
        args: builtins.list[str],
        envs: dict[str, str] | None = None,
        cwd: str | None = None,
        user: str = "user",
        timeout: float | None = None,
        stdin: bool = False,
        tag: str | None = None,
        pty: tuple[int, int] | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Start any program (``cmd`` with ``args``, no shell around it), on a ``(cols, rows)``
        terminal if ``pty`` is given. The events are those of ``run_command``."""
        if pty is not None:
            check_size(*pty)
        lv = self._running(sandbox_id)
        metrics.COMMANDS.inc()
        stream = lv.agent.exec(
            cmd=cmd,
            args=args,
            envs=envs,
            cwd=cwd or lv.workdir,
            user=user,
            timeout=timeout or None,
            stdin=stdin,
            tag=tag,
            pty=None if pty is None else {"cols": pty[0], "rows": pty[1]},
        )
        return await started(stream)

    async def resize_pty(self, sandbox_id: str, pid: int, cols: int, rows: int) -> None:
        check_size(cols, rows)
        await self._running(sandbox_id).agent.resize(pid, cols, rows)

    async def connect_command(self, sandbox_id: str, pid: int) -> AsyncIterator[dict[str, Any]]:
        return await started(self._running(sandbox_id).agent.connect(pid))

    async def list_commands(self, sandbox_id: str) -> builtins.list[dict[str, Any]]:
        return await self._running(sandbox_id).agent.list()

    async def send_stdin(self, sandbox_id: str, pid: int, data: bytes) -> None:
        await self._running(sandbox_id).agent.send_stdin(pid, data)

    async def close_stdin(self, sandbox_id: str, pid: int) -> None:
        await self._running(sandbox_id).agent.close_stdin(pid)

    async def signal_command(self, sandbox_id: str, pid: int, signum: int) -> None:
        await self._running(sandbox_id).agent.signal(pid, signum)

    # ----------------------------------------------------------------- files

    async def read_file(self, sandbox_id: str, path: str, user: str) -> AsyncIterator[bytes]:
        stream = self._running(sandbox_id).agent.read_file(sandbox_path(path, user), user)
        return await started(stream)

    async def read_tar(self, sandbox_id: str, path: str, user: str) -> AsyncIterator[bytes]:
        """A directory as a tar stream; errors (missing, not a directory) surface here."""
        stream = self._running(sandbox_id).agent.read_tar(sandbox_path(path, user), user)
        return await started(stream)

    async def write_file(
        self,
        sandbox_id: str,
        path: str,
        user: str,
        chunks: AsyncIterable[bytes],
        metadata: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        return await self._running(sandbox_id).agent.write_file(sandbox_path(path, user), user, chunks, metadata)

    async def list_dir(
        self, sandbox_id: str, path: str, depth: int, user: str
    ) -> builtins.list[dict[str, Any]]:
        if not 1 <= depth <= 32:
            raise errors.InvalidRequestError("depth must be between 1 and 32")
        return await self._running(sandbox_id).agent.list_dir(sandbox_path(path, user), depth, user)

    async def stat(self, sandbox_id: str, path: str, user: str) -> dict[str, Any]:
        return await self._running(sandbox_id).agent.stat(sandbox_path(path, user), user)

    async def write_files(
        self, sandbox_id: str, dir: str, user: str, parts: AsyncIterator[tuple[str, AsyncIterable[bytes]]]
    ) -> builtins.list[dict[str, Any]]:
        """Write many files under ``dir``, all or nothing.

        Each part goes to a staging dir inside ``dir`` as it streams in; only when every part has
        arrived (and every name passed its checks, which the caller makes while iterating) are the
        files moved into place. Any failure removes the staging dir: nothing is written.
        """
        agent = self._running(sandbox_id).agent
        base = sandbox_path(dir, user).rstrip("/") or "/"
        # The topmost dir this upload creates (if any): a failed upload takes it away again.
        created_top = None
        probe = base
        while probe not in ("", "/"):
            try:
                await agent.stat(probe, user)
                break
            except errors.FileNotFoundError_:
                created_top, probe = probe, probe.rsplit("/", 1)[0]
        stage = f"{base.rstrip('/')}/.corral-upload-{secrets.token_hex(6)}"
        await agent.mkdir(stage, user)
        names: builtins.list[str] = []
        ok = False
        try:
            async for name, chunks in parts:
                await agent.write_file(f"{stage}/{name}", user, chunks)
                names.append(name)
            entries = []
            for name in names:
                final = f"{base.rstrip('/')}/{name}"
                parent = final.rsplit("/", 1)[0] or "/"
                await agent.mkdir(parent, user)
                entries.append(await agent.rename(f"{stage}/{name}", final, user))
            ok = True
            return entries
        finally:
            leftover = stage if ok or created_top is None else created_top
            try:
                await agent.remove(leftover, user)
            except errors.CorralError:
                log.warning("could not remove %s after an upload in sandbox %s", leftover, sandbox_id)

    async def make_dir(self, sandbox_id: str, path: str, user: str) -> bool:
        result = await self._running(sandbox_id).agent.mkdir(sandbox_path(path, user), user)
        return bool(result.get("created", False)) if isinstance(result, dict) else bool(result)

    async def remove(self, sandbox_id: str, path: str, user: str) -> None:
        await self._running(sandbox_id).agent.remove(sandbox_path(path, user), user)

    async def rename(self, sandbox_id: str, src: str, dst: str, user: str) -> dict[str, Any]:
        return await self._running(sandbox_id).agent.rename(sandbox_path(src, user), sandbox_path(dst, user), user)

    async def watch_dir(
        self, sandbox_id: str, path: str, recursive: bool, user: str
    ) -> AsyncIterator[dict[str, Any]]:
        """Filesystem events under a directory: start, then create/write/remove/rename/chmod."""
        stream = self._running(sandbox_id).agent.watch(sandbox_path(path, user), recursive, user)
        return await started(stream)

    # ----------------------------------------------------------------- code interpreter

    async def run_code(self, sandbox_id: str, req: RunCode) -> AsyncIterator[dict[str, Any]]:
        """Run a cell in a Jupyter kernel: ``accepted`` (naming the context), then E2B's
        execution events, last ``end_of_execution``. Unknown contexts and languages raise here."""
        lv = self._running(sandbox_id)
        metrics.CODE_RUNS.inc()
        request = {
            "op": "execute", "code": req.code, "language": req.language, "context_id": req.context_id,
            "env_vars": req.envs, "timeout": req.timeout,
        }  # fmt: skip
        return code_events(await started(lv.agent.code(request)))

    async def code_contexts(self, sandbox_id: str) -> dict[str, Any]:
        answer = await self._running(sandbox_id).agent.code_call({"op": "contexts"})
        return {"contexts": answer.get("contexts", []), "languages": answer.get("languages", [])}

    async def create_code_context(
        self, sandbox_id: str, language: str | None, cwd: str | None
    ) -> dict[str, Any]:
        request = {"op": "create_context", "language": language, "cwd": cwd}
        return dict((await self._running(sandbox_id).agent.code_call(request))["context"])

    async def restart_code_context(self, sandbox_id: str, context_id: str) -> dict[str, Any]:
        request = {"op": "restart_context", "id": context_id}
        return dict((await self._running(sandbox_id).agent.code_call(request))["context"])

    async def remove_code_context(self, sandbox_id: str, context_id: str) -> None:
        await self._running(sandbox_id).agent.code_call({"op": "remove_context", "id": context_id})


MAX_PTY_SIZE = 1000


def check_size(cols: int, rows: int) -> None:
    if not (1 <= cols <= MAX_PTY_SIZE and 1 <= rows <= MAX_PTY_SIZE):
        raise errors.InvalidRequestError(f"a terminal is 1-{MAX_PTY_SIZE} columns by 1-{MAX_PTY_SIZE} rows")


def sandbox_path(path: str, user: str) -> str:
    if not path or "\0" in path or len(path) > 4096:
        raise errors.InvalidRequestError("path must be 1-4096 characters without NUL bytes")
    if path.startswith("/"):
        return path
    home = "/root" if user == "root" else f"/home/{user}"
    return f"{home}/{path}"


async def started(stream: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """Pull the first item so errors (unknown pid, missing file) surface before a response starts."""
    iterator = stream.__aiter__()
    try:
        first = await iterator.__anext__()
    except StopAsyncIteration:
        first = None

    async def rest() -> AsyncIterator[Any]:
        try:
            if first is not None:
                yield first
            async for item in iterator:
                yield item
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                await aclose()

    return rest()


async def code_events(events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    """A cell's events; a sandbox or interpreter that goes away mid-cell becomes an error event."""
    ended = False
    problem = "the code interpreter stopped before the cell finished"
    try:
        async for event in events:
            ended = ended or event.get("type") == "end_of_execution"
            yield event
    except errors.CorralError as e:
        problem = f"the cell did not finish: {e.message}"
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()
    if not ended:
        yield {"type": "error", "name": "SandboxError", "value": problem, "traceback": ""}
        yield {"type": "end_of_execution"}
