"""The agent, for real: a daemon subprocess on the host, real processes, real files, no mocks.

The tests run as root on the host (like the agent inside a sandbox's user namespace), so user
switching and per-thread filesystem identity are exercised against real permissions.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import pwd
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from corral.agent import protocol as p
from corral.agent.client import AgentClient
from corral.agent.daemon import wire
from corral.errors import (
    FileExistsError_,
    FileNotFoundError_,
    InvalidRequestError,
    IsADirectoryError_,
    NotADirectoryError_,
    PermissionDeniedError,
    ProcessNotFoundError,
    UnavailableError,
)

from .conftest import Agent, start_agent, stop_agent

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (user switching, setfsuid)"),
    pytest.mark.timeout(60),
]

NOBODY = pwd.getpwnam("nobody")


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def collect(events: AsyncIterator[dict[str, Any]]) -> dict[str, Any]:
    """Drain a process stream: {"events", "stdout", "stderr", "end", "pid"}."""
    out = {"events": [], "stdout": b"", "stderr": b"", "end": None, "pid": None}
    async for ev in events:
        out["events"].append(ev)
        if ev["type"] == "start":
            out["pid"] = ev["pid"]
        elif ev["type"] in ("stdout", "stderr"):
            assert isinstance(ev["data"], bytes)
            out[ev["type"]] += ev["data"]
        elif ev["type"] == "end":
            out["end"] = ev
    return out


async def sh(client: AgentClient, script: str, **kw: Any) -> dict[str, Any]:
    kw.setdefault("user", "root")
    return await collect(client.exec("/bin/bash", ["-c", script], **kw))


def raw_request(agent: Agent, payload: bytes, kind: bytes = b"J") -> dict[str, Any]:
    """Send one frame over a plain socket (sync helpers of protocol.py) and read the J answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(agent.socket)
        p.send_frame(s, kind, payload)
        k, answer = p.recv_frame(s)
        assert k == p.KIND_JSON
        return p.decode_json(answer)


# --------------------------------------------------------------------------- protocol
def test_daemon_imports_only_the_standard_library() -> None:
    """The daemon runs on the sandbox's python3 alone: stdlib imports, or its own modules."""
    import ast
    import sys

    from corral.agent import AGENT_PATH

    modules = sorted(AGENT_PATH.glob("*.py"))
    assert {m.stem for m in modules} >= {"__init__", "__main__", "wire", "server"}
    for path in modules:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [] if node.level else [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in sys.stdlib_module_names, f"{path.name} imports {name}"


def test_protocol_constants_and_framing_match_the_agent() -> None:
    assert wire.VERSION == p.VERSION
    assert (wire.K_JSON, wire.K_DATA, wire.K_STDOUT, wire.K_STDERR, wire.K_END) == (
        p.KIND_JSON,
        p.KIND_DATA,
        p.KIND_STDOUT,
        p.KIND_STDERR,
        p.KIND_END,
    )
    assert wire.HEADER_SIZE == p.HEADER_SIZE
    assert wire.MAX_SEND == p.MAX_DATA_FRAME
    assert wire.MAX_JSON_IN == p.MAX_JSON_FRAME
    assert wire.MAX_DATA_IN == p.MAX_AGENT_DATA_IN
    for kind in (b"J", b"D", b"1", b"2", b"E"):
        for payload in (b"", b"x", bytes(range(256)) * 300):
            assert wire.frame(kind, payload) == p.encode_frame(kind, payload)
    # The agent's _json-based codec agrees with the json module.
    values = [
        {"op": "exec", "args": ["a", "é", "\udcff", '\n\t"\\'], "n": -12, "f": 1.5, "b": True, "z": None},
        {"nested": {"l": [[], {}, [1, [2, [3]]]]}, "big": 2**70, "e": 1e-300},
    ]
    for v in values:
        assert json.loads(wire.json_dumps(v)) == v
        assert wire.json_loads(json.dumps(v)) == v
        assert wire.json_loads(" " + json.dumps(v, indent=2) + "\n") == v
    for bad in ["{bad", "", "[1,", '{"a":1} x', "NaN", '{"a": "\x01"}']:
        with pytest.raises(ValueError):
            wire.json_loads(bad)


def test_ping_and_start_time(agent: Agent) -> None:
    answer = run(agent.client.ping())
    assert answer == {"ok": True, "pid": agent.pid, "version": p.VERSION}
    assert agent.start_seconds < 1.0
    assert "listening" in agent.log.read_text()


def test_sync_helpers_talk_to_the_agent(agent: Agent) -> None:
    assert raw_request(agent, json.dumps({"op": "ping"}).encode())["ok"] is True


def test_unreachable_agent_raises_unavailable(tmp_path: Path) -> None:
    with pytest.raises(UnavailableError, match="sandbox agent unreachable"):
        run(AgentClient(tmp_path / "missing.sock").ping())
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(tmp_path / "dead.sock"))  # bound, never listening: refused
    with pytest.raises(UnavailableError, match="sandbox agent unreachable"):
        run(AgentClient(tmp_path / "dead.sock").list())
    s.close()


def test_agent_dying_mid_stream_raises_unavailable(tmp_path: Path) -> None:
    a = start_agent(tmp_path)
    try:

        async def main() -> None:
            events = a.client.exec("/bin/bash", ["-c", "echo hi; sleep 30"], user="root")
            assert (await events.__anext__())["type"] == "start"
            assert (await events.__anext__())["data"] == b"hi\n"
            for info in await a.client.list():
                os.killpg(info["pid"], 9)
            a.proc.kill()
            with pytest.raises(UnavailableError, match="sandbox agent unreachable"):
                async for _ in events:
                    pass

        run(main())
    finally:
        stop_agent(a)


# --------------------------------------------------------------------------- exec
def test_exec_streams_stdout_and_stderr_in_order(agent: Agent) -> None:
    script = "echo one; sleep 0.05; echo two >&2; sleep 0.05; printf three; sleep 0.05; echo four >&2; exit 3"
    res = run(sh(agent.client, script))
    assert res["events"][0] == {"type": "start", "pid": res["pid"]}
    assert res["pid"] > 0
    assert [(e["type"], e.get("data")) for e in res["events"][1:-1]] == [
        ("stdout", b"one\n"),
        ("stderr", b"two\n"),
        ("stdout", b"three"),
        ("stderr", b"four\n"),
    ]
    assert res["end"] == {"type": "end", "exit_code": 3, "error": None}


def test_exec_exit_codes_and_direct_commands(agent: Agent) -> None:
    async def main() -> None:
        c = agent.client
        assert (await sh(c, "true"))["end"]["exit_code"] == 0
        assert (await sh(c, "exit 42"))["end"]["exit_code"] == 42
        assert (await sh(c, "kill -9 $$"))["end"] == {"type": "end", "exit_code": 137, "error": "killed"}
        res = await collect(c.exec("/bin/echo", ["a b", "$HOME"], user="root"))  # no shell
        assert res["stdout"] == b"a b $HOME\n"
        res = await sh(c, "no-such-command-xyz")
        assert res["end"]["exit_code"] == 127 and b"not found" in res["stderr"]
        with pytest.raises(FileNotFoundError_):
            await collect(c.exec("/no/such/binary", user="root"))
        # Many at once.
        results = await asyncio.gather(*(sh(c, f"echo {i}") for i in range(20)))
        assert [r["stdout"] for r in results] == [f"{i}\n".encode() for i in range(20)]

    run(main())


def test_envs_precedence(agent: Agent) -> None:
    async def main() -> None:
        c = agent.client
        await c.configure({"A": "sandbox", "B": "sandbox", "PATH": "/custom:/usr/bin:/bin"}, "sbx-host")
        res = await sh(
            c, 'echo "$A $B $C|$PATH|$HOME|$USER|$LOGNAME|$SHELL"', envs={"B": "request", "C": "c"}
        )
        root = pwd.getpwnam("root")
        assert (
            res["stdout"].decode()
            == f"sandbox request c|/custom:/usr/bin:/bin|/root|root|root|{root.pw_shell}\n"
        )
        await c.configure({}, None)  # replaces: the sandbox-wide envs are gone
        res = await sh(c, 'echo "${A-unset}|$PATH"')
        assert res["stdout"] == b"unset|/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"

    run(main())


def test_cwd(agent: Agent, tmp_path: Path) -> None:
    async def main() -> None:
        c = agent.client
        assert (await sh(c, "pwd", cwd=str(tmp_path)))["stdout"] == f"{tmp_path}\n".encode()
        assert (await sh(c, "pwd"))["stdout"] == b"/root\n"  # the user's home by default
        # nobody's home (/nonexistent) does not exist: the default falls back to /.
        assert (await sh(c, "pwd", user="nobody"))["stdout"] == b"/\n"
        with pytest.raises(FileNotFoundError_):
            await sh(c, "pwd", cwd=str(tmp_path / "missing"))

    run(main())


def test_user_switching(agent: Agent) -> None:
    async def main() -> None:
        c = agent.client
        assert (await sh(c, "id -u; id -g", user="root"))["stdout"] == b"0\n0\n"
        res = await sh(c, "id -u; id -g; id -G; echo $HOME $USER", user="nobody")
        groups = sorted(os.getgrouplist("nobody", NOBODY.pw_gid))
        assert res["stdout"].decode().split("\n")[:4] == [
            str(NOBODY.pw_uid),
            str(NOBODY.pw_gid),
            " ".join(map(str, groups)),
            f"{NOBODY.pw_dir} nobody",
        ]
        res = await sh(c, "touch /etc/corral-agent-test", user="nobody")
        assert res["end"]["exit_code"] != 0 and b"Permission denied" in res["stderr"]
        with pytest.raises(InvalidRequestError, match="unknown user"):
            await sh(c, "true", user="no-such-user-xyz")

    run(main())


def test_stdin_send_and_close(agent: Agent) -> None:
    async def main() -> None:
        c = agent.client
        events = c.exec("/bin/bash", ["-c", "cat; echo done"], user="root", stdin=True)
        start = await events.__anext__()
        pid = start["pid"]
        output = asyncio.create_task(collect(events))  # read while writing: cat echoes back
        await c.send_stdin(pid, b"hello ")
        await c.send_stdin(pid, bytes(range(256)))
        big = os.urandom(3 << 20)  # larger than one J frame may be: the client splits it
        await c.send_stdin(pid, big)
        await c.close_stdin(pid)
        res = await output
        assert res["stdout"] == b"hello " + bytes(range(256)) + big + b"done\n"
        assert res["end"]["exit_code"] == 0
        # Without stdin=True the process reads /dev/null, and the stdin op is refused.
        res = await sh(c, "cat; echo eof")
        assert res["stdout"] == b"eof\n"
        events = c.exec("/bin/bash", ["-c", "sleep 5"], user="root")
        pid = (await events.__anext__())["pid"]
        with pytest.raises(InvalidRequestError, match="without stdin"):
            await c.send_stdin(pid, b"x")
        await c.signal(pid, signal.SIGKILL)
        assert (await collect(events))["end"]["error"] == "killed"
        with pytest.raises(ProcessNotFoundError):
            await c.send_stdin(pid, b"x")

    run(main())


def test_signal_goes_to_the_process_group(agent: Agent) -> None:
    async def main() -> None:
        c = agent.client
        events = c.exec("/bin/bash", ["-c", "sleep 30 & sleep 30; echo never"], user="root")
        pid = (await events.__anext__())["pid"]
        t0 = time.monotonic()
        await c.signal(pid, signal.SIGTERM)
        res = await collect(events)
        assert res["end"] == {"type": "end", "exit_code": 128 + signal.SIGTERM, "error": "killed"}
        assert time.monotonic() - t0 < 1.5  # no child was left holding the pipes
        assert res["stdout"] == b""
        with pytest.raises(ProcessNotFoundError):
            await c.signal(pid, signal.SIGTERM)
        with pytest.raises(ProcessNotFoundError):
            await c.signal(999_999_999, signal.SIGTERM)
        with pytest.raises(ProcessNotFoundError):
            await collect(c.connect(999_999_999))

    run(main())


def test_timeout_kills_with_partial_output(agent: Agent) -> None:
    t0 = time.monotonic()
    res = run(sh(agent.client, "echo partial; sleep 0.1; echo more >&2; sleep 30", timeout=0.5))
    assert time.monotonic() - t0 < 3
    assert res["stdout"] == b"partial\n"
    assert res["stderr"] == b"more\n"
    assert res["end"] == {"type": "end", "exit_code": 137, "error": "timeout"}


def test_background_process_list_and_connect(agent: Agent) -> None:
    async def main() -> None:
        c = agent.client
        events = c.exec("/bin/bash", ["-c", "echo one; sleep 0.6; echo two"], user="root", tag="bg-1")
        pid = (await events.__anext__())["pid"]
        assert (await events.__anext__())["data"] == b"one\n"
        await events.aclose()  # the client goes away: the process keeps running
        procs = await c.list()
        assert procs == [
            {
                "pid": pid,
                "cmd": "/bin/bash",
                "args": ["-c", "echo one; sleep 0.6; echo two"],
                "cwd": "/root",
                "tag": "bg-1",
                "user": "root",
            }
        ]
        # Two subscribers at once: both get the replay, the live output and the end.
        both = await asyncio.gather(collect(c.connect(pid)), collect(c.connect(pid)))
        for res in both:
            assert res["events"][0] == {"type": "start", "pid": pid}
            assert res["stdout"] == b"one\ntwo\n"
            assert res["end"] == {"type": "end", "exit_code": 0, "error": None}
        assert await c.list() == []
        # An ended process stays reachable for a while: replay then end.
        res = await collect(c.connect(pid))
        assert res["stdout"] == b"one\ntwo\n" and res["end"]["exit_code"] == 0

    run(main())


def test_replay_buffer_is_bounded_without_subscribers(agent: Agent) -> None:
    async def main() -> None:
        c = agent.client
        # 8 MiB of numbered lines with nobody listening; only the tail is kept.
        script = "seq 1 1000000; seq 1000001 2000000 >&2"
        events = c.exec("/bin/bash", ["-c", script], user="root")
        pid = (await events.__anext__())["pid"]
        await events.aclose()
        for _ in range(200):
            if not await c.list():
                break
            await asyncio.sleep(0.05)
        res = await collect(c.connect(pid))
        replay = res["stdout"] + res["stderr"]
        assert 1 << 20 <= len(replay) <= (1 << 20) + (64 << 10)
        expected_err = "".join(f"{i}\n" for i in range(1000001, 2000001)).encode()
        assert res["stdout"] == b""  # all the stdout was older than the last MiB
        assert expected_err.endswith(res["stderr"])
        assert res["end"]["exit_code"] == 0

    run(main())


def test_large_output_complete_in_order_with_bounded_memory(agent: Agent) -> None:
    n = 2_700_000  # ~20.5 MB of numbered lines
    expected = "".join(f"{i}\n" for i in range(1, n + 1)).encode()
    assert len(expected) > 20_000_000
    rss_base = agent.rss_kib()
    peak = [rss_base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], agent.rss_kib())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()

    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        c = agent.client
        events = c.exec("/bin/bash", ["-c", f"seq 1 {n}"], user="root")
        first = await events.__anext__()
        slow_done: list[dict[str, Any]] = []

        async def slow_consumer() -> dict[str, Any]:
            out: dict[str, Any] = {
                "events": [first],
                "stdout": b"",
                "stderr": b"",
                "end": None,
                "pid": first["pid"],
            }
            async for ev in events:
                if ev["type"] == "stdout":
                    out["stdout"] += ev["data"]
                    if len(out["stdout"]) < 3_000_000:
                        await asyncio.sleep(0.001)  # slower than seq at first: backpressure
                elif ev["type"] == "end":
                    out["end"] = ev
            slow_done.append(out)
            return out

        task = asyncio.create_task(slow_consumer())
        await asyncio.sleep(0.3)
        second = await collect(c.connect(first["pid"]))  # a second subscriber, mid-way
        return await task, second

    try:
        main_res, second = run(main())
    finally:
        stop.set()
        sampler.join()
    assert main_res["end"] == {"type": "end", "exit_code": 0, "error": None}
    assert len(main_res["stdout"]) == len(expected)
    assert main_res["stdout"] == expected
    assert second["end"]["exit_code"] == 0
    assert len(second["stdout"]) > 0 and expected.endswith(second["stdout"])
    # Without backpressure the agent would hold most of the 20 MB (measured: +23 MiB).
    assert peak[0] - rss_base < 16 * 1024, f"agent RSS grew by {(peak[0] - rss_base) // 1024} MiB"


def test_disconnected_subscriber_never_blocks_the_process(agent: Agent) -> None:
    async def main() -> None:
        c = agent.client
        events = c.exec("/bin/bash", ["-c", "seq 1 3000000; echo done"], user="root")
        pid = (await events.__anext__())["pid"]
        await events.__anext__()
        await events.aclose()  # gone while the process still has ~20 MB to write
        for _ in range(200):
            if not await c.list():
                break
            await asyncio.sleep(0.05)
        res = await collect(c.connect(pid))
        assert res["stdout"].endswith(b"3000000\ndone\n")
        assert res["end"]["exit_code"] == 0
        # A download abandoned half-way is fine too.
        big = agent.log.parent / "big.txt"
        big.write_bytes(b"x" * (5 << 20))
        chunks = c.read_file(str(big), "root")
        assert len(await chunks.__anext__()) == p.MAX_DATA_FRAME
        await chunks.aclose()
        assert (await c.ping())["ok"]
        # No thread is left behind: the main thread (plus at most the deadline thread).
        for _ in range(100):
            threads = len(os.listdir(f"/proc/{agent.pid}/task"))
            if threads <= 2:
                break
            await asyncio.sleep(0.02)
        assert threads <= 2

    run(main())


def test_forked_child_holding_the_pipes_does_not_hang_the_end(agent: Agent) -> None:
    async def main() -> None:
        t0 = time.monotonic()
        res = await sh(agent.client, "sleep 30 & echo $!; echo started")
        elapsed = time.monotonic() - t0
        child = int(res["stdout"].split()[0])
        try:
            assert res["stdout"].endswith(b"started\n")
            assert res["end"] == {"type": "end", "exit_code": 0, "error": None}
            assert elapsed < 2.5
        finally:
            os.kill(child, 9)
        # A process that closes its stdout early still streams stderr and ends.
        res = await sh(agent.client, "exec 1>&-; echo err >&2; sleep 0.2; exit 5")
        assert res["stderr"] == b"err\n" and res["end"]["exit_code"] == 5

    run(main())


# --------------------------------------------------------------------------- files
def test_file_metadata_in_xattrs(agent: Agent, shared_dir: Path) -> None:
    async def main() -> None:
        c = agent.client
        path = f"{shared_dir}/meta/m.txt"
        info = await c.write_file(path, "root", b"m", metadata={"Author": "me", "v": "1"})
        assert info["metadata"] == {"author": "me", "v": "1"}
        assert os.getxattr(path, "user.e2b.author") == b"me"
        info = await c.write_file(path, "root", b"n", metadata={"v": "2"})  # replaced
        assert info["metadata"] == {"v": "2"}
        assert "metadata" not in await c.write_file(f"{shared_dir}/meta/plain", "root", b"")
        assert (await c.stat(path, "root"))["metadata"] == {"v": "2"}
        for bad in ({"a b": "x"}, {"k": 5}, {"": "x"}):
            with pytest.raises(InvalidRequestError):
                await c.write_file(path, "root", b"x", metadata=bad)  # type: ignore[arg-type]

    run(main())


def test_file_operations(agent: Agent, shared_dir: Path) -> None:
    async def main() -> None:
        c = agent.client
        base = str(shared_dir)
        info = await c.write_file(f"{base}/a/b/hello.txt", "root", b"hello world")
        assert info["name"] == "hello.txt" and info["path"] == f"{base}/a/b/hello.txt"
        assert info["type"] == "file" and info["size"] == 11
        assert info["owner"] == "root" and info["group"] == "root"
        assert info["permissions"] == "rw-r--r--" and info["mode"] == 0o644
        assert info["symlink_target"] is None
        assert info["modified_time"].endswith("Z") and info["modified_time"][:4].isdigit()
        assert b"".join([ch async for ch in c.read_file(f"{base}/a/b/hello.txt", "root")]) == b"hello world"
        async with await c.open_file(f"{base}/a/b/hello.txt", "root") as dl:
            assert dl.size == 11
            assert [ch async for ch in dl] == [b"hello world"]

        # Iterable and async-iterable uploads; overwrite truncates.
        async def gen() -> AsyncIterator[bytes]:
            yield b"ab"
            yield b""
            yield b"c" * 200_000

        assert (await c.write_file(f"{base}/a/b/hello.txt", "root", gen()))["size"] == 200_002
        assert (await c.write_file(f"{base}/a/b/hello.txt", "root", [b"x", b"yz"]))["size"] == 3
        assert (await c.write_file(f"{base}/empty", "root", b""))["size"] == 0

        os.symlink("a/b/hello.txt", f"{base}/link")
        st = await c.stat(f"{base}/link", "root")
        assert st["type"] == "symlink" and st["symlink_target"] == "a/b/hello.txt"
        st = await c.stat(f"{base}/a", "root")
        assert st["type"] == "dir" and st["permissions"] == "rwxr-xr-x"

        entries = await c.list_dir(base, 1, "root")
        assert [e["name"] for e in entries] == ["a", "empty", "link"]
        entries = await c.list_dir(base, 3, "root")
        assert [e["path"] for e in entries] == [
            f"{base}/a",
            f"{base}/a/b",
            f"{base}/a/b/hello.txt",
            f"{base}/empty",
            f"{base}/link",
        ]
        # Symlinks to directories are listed, not entered.
        os.symlink(base + "/a", f"{base}/a/loop")
        entries = await c.list_dir(f"{base}/a", 5, "root")
        assert [e["name"] for e in entries] == ["b", "hello.txt", "loop"]

        assert await c.mkdir(f"{base}/new/deep/dir", "root") is True
        assert await c.mkdir(f"{base}/new/deep/dir", "root") is False
        with pytest.raises(FileExistsError_):
            await c.mkdir(f"{base}/empty", "root")

        info = await c.rename(f"{base}/empty", f"{base}/new/moved", "root")
        assert info["path"] == f"{base}/new/moved" and info["type"] == "file"
        with pytest.raises(FileNotFoundError_):
            await c.stat(f"{base}/empty", "root")

        # remove: a file, a symlink (not its target), a tree containing a symlink out of it.
        outside = shared_dir / "keep"
        outside.mkdir()
        (outside / "precious").write_text("x")
        os.symlink(str(outside), f"{base}/new/deep/out")
        await c.remove(f"{base}/link", "root")
        assert (shared_dir / "a/b/hello.txt").exists()
        await c.remove(f"{base}/new", "root")
        assert not (shared_dir / "new").exists()
        assert (outside / "precious").read_text() == "x"
        with pytest.raises(FileNotFoundError_):
            await c.remove(f"{base}/new", "root")

    run(main())


def test_file_errors(agent: Agent, shared_dir: Path) -> None:
    async def main() -> None:
        c = agent.client
        base = str(shared_dir)
        (shared_dir / "file").write_text("data")
        with pytest.raises(FileNotFoundError_):
            await c.read_file(f"{base}/missing", "root").__anext__()
        with pytest.raises(FileNotFoundError_):
            await c.stat(f"{base}/missing", "root")
        with pytest.raises(FileNotFoundError_):
            await c.list_dir(f"{base}/missing", 1, "root")
        with pytest.raises(NotADirectoryError_):
            await c.list_dir(f"{base}/file", 1, "root")
        with pytest.raises(NotADirectoryError_):
            await c.write_file(f"{base}/file/sub/x", "root", b"x")
        with pytest.raises(NotADirectoryError_):
            await c.stat(f"{base}/file/x", "root")
        with pytest.raises(IsADirectoryError_):
            await c.read_file(base, "root").__anext__()
        with pytest.raises(IsADirectoryError_):
            await c.write_file(base, "root", b"x")
        with pytest.raises(FileNotFoundError_):
            await c.rename(f"{base}/missing", f"{base}/other", "root")
        with pytest.raises(InvalidRequestError, match="unknown user"):
            await c.stat(base, "no-such-user-xyz")

    run(main())


def test_file_permissions_follow_the_user(agent: Agent, shared_dir: Path) -> None:
    async def main() -> None:
        c = agent.client
        base = str(shared_dir)  # root-owned, 0755
        with pytest.raises(PermissionDeniedError):
            await c.write_file(f"{base}/x", "nobody", b"x")
        with pytest.raises(PermissionDeniedError):
            await c.write_file(f"{base}/sub/x", "nobody", b"x")  # parent creation refused too
        with pytest.raises(PermissionDeniedError):
            await c.mkdir(f"{base}/d", "nobody")
        # A refused upload stops early, without sending everything (and the agent survives).
        big = (b"z" * (1 << 20) for _ in range(512))
        t0 = time.monotonic()
        with pytest.raises(PermissionDeniedError):
            await c.write_file(f"{base}/big", "nobody", big)
        assert time.monotonic() - t0 < 5
        (shared_dir / "secret").write_text("s")
        (shared_dir / "secret").chmod(0o600)
        with pytest.raises(PermissionDeniedError):
            await c.read_file(f"{base}/secret", "nobody").__anext__()
        with pytest.raises(PermissionDeniedError):
            await c.remove(f"{base}/secret", "nobody")
        with pytest.raises(PermissionDeniedError):
            await c.rename(f"{base}/secret", f"{base}/s2", "nobody")
        assert b"".join([x async for x in c.read_file(f"{base}/secret", "root")]) == b"s"

        # nobody in its own directory: new files and created parents belong to nobody.
        home = shared_dir / "home"
        home.mkdir()
        os.chown(home, NOBODY.pw_uid, NOBODY.pw_gid)
        info = await c.write_file(f"{home}/p/q/f.txt", "nobody", b"mine")
        assert info["owner"] == "nobody" and info["group"] == NOBODY_GROUP
        assert (await c.stat(f"{home}/p", "nobody"))["owner"] == "nobody"
        assert (home / "p" / "q").stat().st_uid == NOBODY.pw_uid
        assert await c.mkdir(f"{home}/m", "nobody") is True
        assert (home / "m").stat().st_uid == NOBODY.pw_uid
        await c.remove(f"{home}/p", "nobody")
        # Relative paths are relative to the user's home.
        info = await c.write_file("rel.txt", "root", b"r")
        try:
            assert info["path"] == "/root/rel.txt"
        finally:
            os.unlink("/root/rel.txt")

    run(main())


NOBODY_GROUP = __import__("grp").getgrgid(NOBODY.pw_gid).gr_name


def test_large_file_streams_both_ways(agent: Agent, tmp_path: Path) -> None:
    size = 200 << 20
    block = hashlib.sha256(b"seed").digest() * 4096  # 128 KiB

    async def main() -> None:
        c = agent.client
        h_in = hashlib.sha256()

        async def source() -> AsyncIterator[bytes]:
            sent = 0
            i = 0
            while sent < size:
                chunk = i.to_bytes(8, "big") + block[8:]
                h_in.update(chunk)
                sent += len(chunk)
                i += 1
                yield chunk

        rss_base = agent.rss_kib()
        info = await c.write_file(str(tmp_path / "big.bin"), "root", source())
        assert info["size"] == size
        assert agent.rss_kib() - rss_base < 16 * 1024
        h_out = hashlib.sha256()
        n = 0
        async for chunk in c.read_file(str(tmp_path / "big.bin"), "root"):
            assert len(chunk) <= p.MAX_DATA_FRAME
            h_out.update(chunk)
            n += len(chunk)
        assert n == size
        assert h_out.hexdigest() == h_in.hexdigest()
        assert agent.rss_kib() - rss_base < 16 * 1024

    run(main())


# --------------------------------------------------------------------------- bad requests
def test_bad_requests_are_answered_and_the_agent_survives(agent: Agent) -> None:
    def err(payload: Any, kind: bytes = b"J") -> dict[str, Any]:
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return raw_request(agent, raw, kind)["error"]

    cases: list[Any] = [
        b"{bad json",
        b"\xff\xfe",
        b"[1, 2]",
        b"",
        {"no": "op"},
        {"op": "no-such-op"},
        {"op": 5},
        {"op": "exec"},
        {"op": "exec", "cmd": "/bin/true", "args": "not a list"},
        {"op": "exec", "cmd": "/bin/true", "args": [1]},
        {"op": "exec", "cmd": "/bin/true", "envs": ["A=1"]},
        {"op": "exec", "cmd": "/bin/true", "timeout": "soon"},
        {"op": "exec", "cmd": "/bin/true", "stdin": "yes"},
        {"op": "exec", "cmd": "/bin/true", "user": 0},
        {"op": "exec", "cmd": "/bin/t\u0000rue", "user": "root"},
        {"op": "signal", "pid": "12"},
        {"op": "signal", "pid": 1, "signal": 15},
        {"op": "signal", "pid": 1, "signal": 99},
        {"op": "stdin", "pid": 1, "data_b64": 5},
        {"op": "configure", "envs": {"A": 1}},
        {"op": "stat"},
        {"op": "stat", "path": 5, "user": "root"},
        {"op": "list_dir", "path": "/", "depth": 0, "user": "root"},
        {"op": "list_dir", "path": "/", "depth": True, "user": "root"},
        {"op": "rename", "src": "/x", "user": "root"},
    ]
    for case in cases:
        e = err(case)
        assert set(e) == {"code", "message"}
        if case == {"op": "signal", "pid": 1, "signal": 15}:
            assert e["code"] == "process_not_found"
        else:
            assert e["code"] == "invalid_request", (case, e)
    assert "malformed JSON" in err(b"{bad json")["message"]
    assert err(b"x", kind=b"D")["code"] == "invalid_request"
    # A J frame over 1 MiB is refused before being read.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(agent.socket)
        s.sendall(b"J" + (2 << 20).to_bytes(4, "big"))
        kind, answer = p.recv_frame(s)
        assert kind == b"J" and p.decode_json(answer)["error"]["code"] == "invalid_request"
    # Connections that close early, or mid-frame, are shrugged off.
    for junk in (b"", b"J\x00", b"J\x00\x00\x00\x10{"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(agent.socket)
            s.sendall(junk)
    assert run(agent.client.ping())["ok"] is True
    assert agent.proc.poll() is None
