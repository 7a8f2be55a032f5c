"""The agent's ``watch`` op (inotify), for real: a daemon on the host, real files."""

from __future__ import annotations

import asyncio
import os
import pwd
import time
from pathlib import Path
from typing import Any

import pytest

from corral.errors import FileNotFoundError_, NotADirectoryError_, PermissionDeniedError

from .conftest import Agent

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (user switching, setfsuid)"),
    pytest.mark.timeout(60),
]


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def inotify_fds(pid: int) -> int:
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:inotify":
                n += 1
        except OSError:
            pass
    return n


async def expect(events: Any, wanted: set[tuple[str, str]], timeout: float = 10.0) -> list[dict[str, Any]]:
    """Read events until every (type, path) in ``wanted`` was seen; returns everything read."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    missing = set(wanted)
    while missing:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"missing {missing}; got {seen}")
        ev = await asyncio.wait_for(events.__anext__(), left)
        seen.append(ev)
        missing.discard((ev["type"], ev["path"]))
    return seen


def test_watch_reports_each_kind_of_change(agent: Agent, shared_dir: Path) -> None:
    d = str(shared_dir)

    async def main() -> None:
        events = agent.client.watch(d, recursive=False, user="root")
        first = await events.__anext__()
        assert first == {"type": "start"}
        Path(d, "a.txt").write_text("hello")
        seen = await expect(events, {("create", f"{d}/a.txt"), ("write", f"{d}/a.txt")})
        assert seen[0]["time"].endswith("Z")
        Path(d, "a.txt").chmod(0o600)
        await expect(events, {("chmod", f"{d}/a.txt")})
        os.rename(f"{d}/a.txt", f"{d}/b.txt")
        await expect(events, {("rename", f"{d}/a.txt"), ("create", f"{d}/b.txt")})
        os.unlink(f"{d}/b.txt")
        await expect(events, {("remove", f"{d}/b.txt")})
        # not recursive: a change in a subdirectory is not reported, the next one here is
        os.mkdir(f"{d}/sub")
        await expect(events, {("create", f"{d}/sub")})
        Path(d, "sub", "inner").write_text("x")
        Path(d, "marker").write_text("x")
        seen = await expect(events, {("create", f"{d}/marker")})
        assert not [e for e in seen if e["path"].startswith(f"{d}/sub/")]
        await events.aclose()

    asyncio.run(main())


def test_watch_recursive_follows_new_subdirs_and_frees_its_fd(agent: Agent, shared_dir: Path) -> None:
    d = str(shared_dir)
    os.makedirs(f"{d}/old/deep")
    before = fd_count(agent.pid)

    async def main() -> None:
        events = agent.client.watch(d, recursive=True, user="root")
        assert (await events.__anext__())["type"] == "start"
        assert inotify_fds(agent.pid) == 1
        Path(d, "old", "deep", "f").write_text("1")
        await expect(events, {("create", f"{d}/old/deep/f"), ("write", f"{d}/old/deep/f")})
        os.mkdir(f"{d}/new")
        await expect(events, {("create", f"{d}/new")})  # watched before it is reported
        Path(d, "new", "g").write_text("2")
        await expect(events, {("create", f"{d}/new/g"), ("write", f"{d}/new/g")})
        os.rename(f"{d}/new", f"{d}/moved")
        await expect(events, {("rename", f"{d}/new"), ("create", f"{d}/moved")})
        Path(d, "moved", "g").write_text("3")
        await expect(events, {("write", f"{d}/moved/g")})
        await events.aclose()

    asyncio.run(main())
    deadline = time.monotonic() + 10
    while inotify_fds(agent.pid) or fd_count(agent.pid) > before:
        assert time.monotonic() < deadline, f"fds left: {os.listdir(f'/proc/{agent.pid}/fd')}"
        time.sleep(0.02)


def test_watch_errors(agent: Agent, shared_dir: Path) -> None:
    async def first(path: str, user: str = "root") -> dict[str, Any]:
        events = agent.client.watch(path, user=user)
        try:
            return await events.__anext__()
        finally:
            await events.aclose()

    with pytest.raises(FileNotFoundError_):
        asyncio.run(first(f"{shared_dir}/missing"))
    Path(shared_dir, "file").write_text("x")
    with pytest.raises(NotADirectoryError_):
        asyncio.run(first(f"{shared_dir}/file"))
    private = shared_dir / "private"
    private.mkdir(mode=0o700)
    assert pwd.getpwnam("nobody")
    with pytest.raises(PermissionDeniedError):
        asyncio.run(first(str(private), user="nobody"))
    assert inotify_fds(agent.pid) == 0
