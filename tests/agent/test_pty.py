"""The agent's terminals (exec with pty, stdin, resize, connect), for real: a daemon on the host."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from corral.agent.client import AgentClient
from corral.errors import InvalidRequestError, ProcessNotFoundError

from .conftest import Agent

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (user switching)"),
    pytest.mark.timeout(60),
]


class Term:
    """A terminal's event stream read in the background, with waits on its output."""

    def __init__(self, events: AsyncIterator[dict[str, Any]]) -> None:
        self.events = events
        self.out = b""
        self.end: dict[str, Any] | None = None
        self.changed = asyncio.Event()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for ev in self.events:
            if ev["type"] == "stdout":
                self.out += ev["data"]
            elif ev["type"] == "end":
                self.end = ev
            else:
                assert ev["type"] != "stderr", "a terminal has no separate stderr"
            self.changed.set()

    async def expect(self, needle: bytes, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.out:
            left = deadline - time.monotonic()
            assert left > 0 and self.end is None, f"{needle!r} not in {self.out[-500:]!r} (end {self.end})"
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), left)
            except TimeoutError:
                pass


async def start(c: AgentClient, cols: int = 80, rows: int = 24, **kw: Any) -> tuple[int, Term]:
    kw.setdefault("user", "root")
    events = c.exec("/bin/bash", kw.pop("args", ["--norc", "--noprofile", "-i"]), pty={"cols": cols, "rows": rows}, **kw)
    first = await events.__anext__()
    assert first["type"] == "start"
    return first["pid"], Term(events)


def test_pty_shell_size_resize_and_exit(agent: Agent) -> None:
    async def main() -> None:
        c = agent.client
        pid, t = await start(c, 81, 25, envs={"PS1": "$ "})
        await c.send_stdin(pid, b"echo $((6*7)); stty size; tty; echo $TERM $LANG\n")
        await t.expect(b"42\r\n")  # the terminal turns \n into \r\n
        await t.expect(b"25 81\r\n")
        await t.expect(b"xterm-256color C.UTF-8")
        assert b"/dev/pts/" in t.out
        await c.resize(pid, 132, 43)
        await c.send_stdin(pid, b"stty size\n")
        await t.expect(b"43 132\r\n")
        # The shell is the session leader with the terminal as its controlling terminal.
        await c.send_stdin(pid, b"ps -o sid=,tty= -p $$; exit 3\n")
        await t.task
        assert t.end == {"type": "end", "exit_code": 3, "error": None}
        assert f"{pid} pts/".encode() in b" ".join(t.out.split())
        with pytest.raises(ProcessNotFoundError):
            await c.send_stdin(pid, b"x")
        with pytest.raises(ProcessNotFoundError):
            await c.resize(pid, 10, 10)

    asyncio.run(main())


def test_pty_connect_kill_and_bad_requests(agent: Agent) -> None:
    async def main() -> None:
        c = agent.client
        pid, t = await start(c, envs={"PS1": "$ "})
        await c.send_stdin(pid, b"echo first-$((1+1))\n")
        await t.expect(b"first-2")
        t.task.cancel()
        await asyncio.gather(t.task, return_exceptions=True)
        await t.events.aclose()  # the client goes away: the terminal goes on
        await c.send_stdin(pid, b"echo meanwhile-$((2+3))\n")
        t2 = Term(c.connect(pid))
        await t2.expect(b"first-2")
        await t2.expect(b"meanwhile-5")
        await c.signal(pid, signal.SIGKILL)
        await t2.task
        assert t2.end == {"type": "end", "exit_code": 137, "error": "killed"}

        for size in ({"cols": 0, "rows": 0}, {"cols": 100000, "rows": 100000}, {"cols": 80}, {"cols": "80", "rows": 24}):
            with pytest.raises(InvalidRequestError):
                await anext(aiter(c.exec("/bin/true", pty=size)))  # type: ignore[arg-type]
        # Not a terminal: no resize; a terminal: no close_stdin.
        events = c.exec("/bin/sleep", ["10"], user="root")
        spid = (await anext(events))["pid"]
        with pytest.raises(InvalidRequestError, match="terminal"):
            await c.resize(spid, 80, 24)
        await c.signal(spid, signal.SIGKILL)
        await events.aclose()
        pid, t = await start(c)
        with pytest.raises(InvalidRequestError, match="Ctrl-D"):
            await c.close_stdin(pid)
        with pytest.raises(InvalidRequestError):
            await c.resize(pid, 1001, 24)
        await c.send_stdin(pid, b"\x04")  # Ctrl-D: end of file, the shell exits
        await t.task
        assert t.end is not None and t.end["exit_code"] == 0
        with pytest.raises(ProcessNotFoundError):
            await c.resize(999_999_999, 80, 24)

    asyncio.run(main())


def test_pty_as_another_user_and_output_after_exit(agent: Agent) -> None:
    async def main() -> None:
        c = agent.client
        # Output written right before the exit is not lost (EIO on the master is the end).
        _pid, t = await start(c, user="nobody", args=["-c", "id -un; tty; head -c 200000 /dev/zero | tr '\\0' x"])
        await t.task
        assert t.end == {"type": "end", "exit_code": 0, "error": None}
        assert t.out.startswith(b"nobody\r\n/dev/pts/")
        assert t.out.count(b"x") == 200000

    asyncio.run(main())
