"""The async SDK against a real server (sync test functions driving ``asyncio.run``)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest

import corral
from corral import AsyncSandbox, CommandExitError, EntryInfo, SandboxInfo

MiB = 1 << 20


def run(test: Callable[[AsyncSandbox], Awaitable[None]], api: dict[str, str], **create: Any) -> None:
    """Run ``test`` with a fresh sandbox that is killed afterwards."""

    async def main() -> None:
        async with await AsyncSandbox.create(**create, **api) as sbx:
            await test(sbx)

    asyncio.run(main())


def test_lifecycle(api: dict[str, str]) -> None:
    async def main() -> None:
        tag = uuid.uuid4().hex
        async with await AsyncSandbox.create(metadata={"suite": tag}, timeout=120, **api) as sbx:
            sandbox_id = sbx.sandbox_id
            assert sbx.id == sandbox_id
            info = await sbx.get_info()
            assert isinstance(info, SandboxInfo)
            assert (info.state, info.template, info.metadata) == ("running", "base", {"suite": tag})
            assert await sbx.is_running()
            listed = await AsyncSandbox.list(state="running", metadata={"suite": tag}, **api)
            assert [s.sandbox_id for s in listed] == [sandbox_id]
            other = await AsyncSandbox.connect(sandbox_id, **api)
            assert (await other.get_info()).sandbox_id == sandbox_id
            await other.close()
        again = await AsyncSandbox.connect(sandbox_id, **api)
        assert (await again.get_info()).state == "killed"  # the context manager killed it
        assert not await again.is_running()
        assert await again.kill() is False
        assert await AsyncSandbox.kill_by_id(sandbox_id, **api) is False
        await again.close()

    asyncio.run(main())


def test_kill_and_set_timeout(api: dict[str, str]) -> None:
    async def main() -> None:
        sbx = await AsyncSandbox.create(**api)
        await sbx.set_timeout(3600)
        end_at = (await sbx.get_info()).end_at
        assert end_at is not None and (end_at - datetime.now(UTC)).total_seconds() > 3500
        assert await sbx.kill() is True
        assert await sbx.kill() is False
        await sbx.close()

    asyncio.run(main())


def test_run_with_async_and_sync_callbacks(api: dict[str, str]) -> None:
    async def test(sbx: AsyncSandbox) -> None:
        out: list[str] = []
        err: list[str] = []

        async def on_stdout(data: str) -> None:
            out.append(data)
            if "ready" in "".join(out) and not await sbx.files.exists("/tmp/go"):
                await sbx.files.write("/tmp/go", "")

        script = "echo ready; echo warn >&2; while [ ! -e /tmp/go ]; do sleep 0.01; done; echo 1; echo 2"
        r = await sbx.commands.run(script, on_stdout=on_stdout, on_stderr=err.append, timeout=20)
        assert "".join(out) == r.stdout == "ready\n1\n2\n"
        assert "".join(err) == r.stderr == "warn\n"
        assert r.exit_code == 0
        r = await sbx.commands.run('echo "$X"; pwd; whoami', envs={"X": "y"}, cwd="/tmp", user="root")
        assert r.stdout == "y\n/tmp\nroot\n"

    run(test, api)


def test_exit_error_and_timeout(api: dict[str, str]) -> None:
    async def test(sbx: AsyncSandbox) -> None:
        with pytest.raises(CommandExitError) as exit_info:
            await sbx.commands.run("echo out; echo err >&2; exit 3")
        assert (exit_info.value.stdout, exit_info.value.stderr, exit_info.value.exit_code) == (
            "out\n",
            "err\n",
            3,
        )
        with pytest.raises(corral.TimeoutError) as timeout_info:
            await sbx.commands.run("echo partial; sleep 30", timeout=1)
        assert timeout_info.value.stdout == "partial\n"  # type: ignore[attr-defined]

    run(test, api)


def test_background_stdin_list_wait(api: dict[str, str]) -> None:
    async def test(sbx: AsyncSandbox) -> None:
        handle = await sbx.commands.run("cat", background=True, stdin=True, tag="t")
        assert handle.pid in [p.pid for p in await sbx.commands.list()]
        await handle.send_stdin("a\n")
        await sbx.commands.send_stdin(handle.pid, "b\n")
        await sbx.commands.close_stdin(handle.pid)
        r = await handle.wait()
        assert (r.stdout, r.exit_code) == ("a\nb\n", 0)

        other = await sbx.commands.run("wc -c", background=True, stdin=True)
        await other.send_stdin("123")
        await other.close_stdin()
        assert (await other.wait()).stdout.strip() == "3"

    run(test, api)


def test_connect_iterate_kill_signal(api: dict[str, str]) -> None:
    async def test(sbx: AsyncSandbox) -> None:
        first = await sbx.commands.run("echo one; read x; echo two $x", background=True, stdin=True)
        async for stdout, _ in first:
            if stdout and "one" in stdout:
                break
        await first.disconnect()
        again = await sbx.commands.connect(first.pid)
        await sbx.commands.send_stdin(first.pid, "z\n")
        assert (await again.wait()).stdout == "one\ntwo z\n"

        sleeper = await sbx.commands.run("sleep 60", background=True)
        assert await sbx.commands.kill(sleeper.pid) is True
        with pytest.raises(CommandExitError):
            await sleeper.wait()
        assert await sbx.commands.kill(sleeper.pid) is False

        trapper = await sbx.commands.run(
            "trap 'exit 7' TERM; echo ready; while :; do sleep 0.05; done", background=True
        )
        async for stdout, _ in trapper:
            if stdout and "ready" in stdout:
                break
        await sbx.commands.send_signal(trapper.pid, "SIGTERM")
        with pytest.raises(CommandExitError) as info:
            await trapper.wait()
        assert info.value.exit_code == 7

        doomed = await sbx.commands.run("sleep 60", background=True)
        assert await doomed.kill() is True
        with pytest.raises(CommandExitError):
            await doomed.wait()

    run(test, api)


def test_files(api: dict[str, str]) -> None:
    async def test(sbx: AsyncSandbox) -> None:
        info = await sbx.files.write("/tmp/d/a.txt", "héllo")
        assert isinstance(info, EntryInfo) and info.size == 6 and info.type == "file"
        assert await sbx.files.read("/tmp/d/a.txt") == "héllo"
        await sbx.files.write("/tmp/d/b.bin", b"\x00\x01")
        assert await sbx.files.read("/tmp/d/b.bin", format="bytes") == b"\x00\x01"
        assert {e.name for e in await sbx.files.list("/tmp/d")} == {"a.txt", "b.bin"}
        assert await sbx.files.exists("/tmp/d/a.txt")
        assert not await sbx.files.exists("/tmp/d/nope")
        assert (await sbx.files.get_info("/tmp/d")).type == "dir"
        assert await sbx.files.make_dir("/tmp/d/sub") is True
        assert await sbx.files.make_dir("/tmp/d/sub") is False
        moved = await sbx.files.rename("/tmp/d/a.txt", "/tmp/d/sub/c.txt")
        assert moved.path == "/tmp/d/sub/c.txt"
        assert {e.path for e in await sbx.files.list("/tmp/d", depth=2)} >= {"/tmp/d/sub/c.txt"}
        await sbx.files.remove("/tmp/d")
        assert not await sbx.files.exists("/tmp/d")
        with pytest.raises(corral.FileNotFoundError):
            await sbx.files.read("/tmp/d/sub/c.txt")
        with pytest.raises(corral.FileNotFoundError):
            await sbx.files.get_info("/tmp/d")

    run(test, api)


def test_large_file_streamed_both_ways(api: dict[str, str]) -> None:
    size = 50 * MiB

    async def test(sbx: AsyncSandbox) -> None:
        sent = hashlib.sha256()

        async def chunks() -> AsyncIterator[bytes]:
            left = size
            while left:
                chunk = os.urandom(min(MiB, left))
                sent.update(chunk)
                left -= len(chunk)
                yield chunk

        info = await sbx.files.write("/tmp/big", chunks())
        assert info.size == size
        got, n = hashlib.sha256(), 0
        async for chunk in await sbx.files.read("/tmp/big", format="stream"):
            got.update(chunk)
            n += len(chunk)
        assert n == size and got.hexdigest() == sent.hexdigest()
        inside = (await sbx.commands.run("sha256sum /tmp/big", timeout=60)).stdout.split()[0]
        assert inside == sent.hexdigest()

    run(test, api)


def test_errors(corral_server: Any, api: dict[str, str]) -> None:
    async def main() -> None:
        with pytest.raises(corral.SandboxNotFoundError):
            await AsyncSandbox.connect("sbx-does-not-exist", **api)
        with pytest.raises(corral.AuthenticationError):
            await AsyncSandbox.list(api_url=corral_server.url, api_key="wrong")

    asyncio.run(main())


def test_config_from_environment(corral_env: Any) -> None:
    async def main() -> None:
        async with await AsyncSandbox.create() as sbx:
            assert (await sbx.commands.run("echo env")).stdout == "env\n"

    asyncio.run(main())
