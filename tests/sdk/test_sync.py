"""The sync SDK against a real server and real sandboxes (no mocks)."""

from __future__ import annotations

import hashlib
import io
import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

import corral
from corral import (
    AuthenticationError,
    CommandExitError,
    CommandResult,
    EntryInfo,
    Sandbox,
    SandboxInfo,
    SandboxNotFoundError,
)
from helpers import free_port, wait_until

MiB = 1 << 20


# ------------------------------------------------------------------------------- lifecycle


def test_create_returns_running_sandbox_with_info(api: dict[str, str]) -> None:
    with Sandbox.create(metadata={"who": "test"}, timeout=120, memory_mb=256, **api) as sbx:
        assert sbx.id == sbx.sandbox_id
        info = sbx.get_info()
        assert isinstance(info, SandboxInfo)
        assert info.sandbox_id == sbx.sandbox_id
        assert info.template == "base"
        assert info.state == "running"
        assert info.metadata == {"who": "test"}
        assert info.memory_mb == 256
        assert info.internet is True
        assert isinstance(info.started_at, datetime) and info.started_at.tzinfo is not None
        assert info.end_at is not None
        assert 100 < (info.end_at - datetime.now(UTC)).total_seconds() <= 121
        assert sbx.is_running()


def test_context_manager_kills(api: dict[str, str]) -> None:
    with Sandbox.create(**api) as sbx:
        sandbox_id = sbx.sandbox_id
    again = Sandbox.connect(sandbox_id, **api)
    info = again.get_info()
    assert info.state == "killed"
    assert not again.is_running()
    assert again.kill() is False
    again.close()


def test_kill_returns_bool(api: dict[str, str]) -> None:
    sbx = Sandbox.create(**api)
    assert sbx.kill() is True
    assert sbx.kill() is False
    assert Sandbox.kill_by_id(sbx.sandbox_id, **api) is False
    sbx.close()


def test_kill_by_id(api: dict[str, str]) -> None:
    sbx = Sandbox.create(**api)
    assert Sandbox.kill_by_id(sbx.sandbox_id, **api) is True
    assert sbx.get_info().state == "killed"
    sbx.close()


def test_connect_to_existing_sandbox(sbx: Sandbox, api: dict[str, str]) -> None:
    sbx.files.write("/tmp/mark", "from the first client")
    other = Sandbox.connect(sbx.sandbox_id, **api)
    try:
        assert other.sandbox_id == sbx.sandbox_id
        assert other.files.read("/tmp/mark") == "from the first client"
        assert other.commands.run("cat /tmp/mark").stdout == "from the first client"
    finally:
        other.close()


def test_config_from_environment(corral_env: Any) -> None:
    with Sandbox.create() as sbx:
        assert sbx.commands.run("echo env").stdout == "env\n"


def test_list_with_metadata_and_state_filter(api: dict[str, str]) -> None:
    tag = uuid.uuid4().hex
    a = Sandbox.create(metadata={"suite": tag, "n": "1"}, **api)
    b = Sandbox.create(metadata={"suite": tag, "n": "2"}, **api)
    try:
        found = Sandbox.list(metadata={"suite": tag}, **api)
        assert sorted(s.sandbox_id for s in found) == sorted([a.sandbox_id, b.sandbox_id])
        assert all(isinstance(s, SandboxInfo) for s in found)
        only_b = Sandbox.list(metadata={"suite": tag, "n": "2"}, **api)
        assert [s.sandbox_id for s in only_b] == [b.sandbox_id]
        a.kill()
        running = Sandbox.list(state="running", metadata={"suite": tag}, **api)
        assert [s.sandbox_id for s in running] == [b.sandbox_id]
        killed = Sandbox.list(state=["killed"], metadata={"suite": tag}, **api)
        assert [s.sandbox_id for s in killed] == [a.sandbox_id]
    finally:
        for s in (a, b):
            s.kill()
            s.close()


def test_set_timeout_extends_and_expires(sbx: Sandbox) -> None:
    sbx.set_timeout(3600)
    end_at = sbx.get_info().end_at
    assert end_at is not None
    assert 3500 < (end_at - datetime.now(UTC)).total_seconds() <= 3601
    sbx.set_timeout(1)
    wait_until(lambda: sbx.get_info().state == "expired", timeout=15, interval=0.1, what="expiry")
    assert not sbx.is_running()
    assert sbx.get_info().reason


# -------------------------------------------------------------------------------- commands


def test_run_returns_result(sbx: Sandbox) -> None:
    r = sbx.commands.run("echo hello; echo oops >&2")
    assert isinstance(r, CommandResult)
    assert (r.stdout, r.stderr, r.exit_code, r.error) == ("hello\n", "oops\n", 0, None)


def test_run_envs_cwd_user(api: dict[str, str]) -> None:
    with Sandbox.create(envs={"WIDE": "sandbox"}, **api) as sbx:
        r = sbx.commands.run('echo "$WIDE $ONE"; pwd; whoami', envs={"ONE": "cmd"}, cwd="/tmp")
        assert r.stdout == "sandbox cmd\n/tmp\nuser\n"
        assert sbx.commands.run("whoami", user="root").stdout == "root\n"


def test_run_streams_to_callbacks_while_running(sbx: Sandbox) -> None:
    # The command only finishes once the stdout callback has seen "ready" and made the file it
    # waits for: that proves the output arrives while the command runs.
    seen: list[str] = []
    errs: list[str] = []

    def on_stdout(data: str) -> None:
        seen.append(data)
        if "ready" in "".join(seen) and not sbx.files.exists("/tmp/go"):
            sbx.files.write("/tmp/go", "")

    script = "echo ready; echo warn >&2; while [ ! -e /tmp/go ]; do sleep 0.01; done; for i in 1 2 3; do echo $i; done"
    r = sbx.commands.run(script, on_stdout=on_stdout, on_stderr=errs.append, timeout=20)
    assert "".join(seen) == "ready\n1\n2\n3\n" == r.stdout
    assert "".join(errs) == "warn\n" == r.stderr


def test_run_non_zero_exit_raises(sbx: Sandbox) -> None:
    with pytest.raises(CommandExitError) as info:
        sbx.commands.run("echo out; echo err >&2; exit 3")
    assert info.value.exit_code == 3
    assert info.value.stdout == "out\n"
    assert info.value.stderr == "err\n"
    assert isinstance(info.value, corral.CorralError)


def test_run_timeout_raises_with_partial_output(sbx: Sandbox) -> None:
    start = time.monotonic()
    with pytest.raises(corral.TimeoutError) as info:
        sbx.commands.run("echo partial; echo e >&2; sleep 30", timeout=1)
    assert time.monotonic() - start < 15
    assert info.value.stdout == "partial\n"  # type: ignore[attr-defined]
    assert info.value.stderr == "e\n"  # type: ignore[attr-defined]
    assert isinstance(info.value, corral.CommandTimeoutError)
    assert not any("sleep 30" in " ".join([p.cmd, *p.args]) for p in sbx.commands.list())


def test_background_list_stdin_wait(sbx: Sandbox) -> None:
    handle = sbx.commands.run("cat; echo done >&2", background=True, stdin=True, tag="cat-job")
    assert handle.pid > 0
    procs = sbx.commands.list()
    mine = [p for p in procs if p.pid == handle.pid]
    assert mine and mine[0].tag == "cat-job"
    handle.send_stdin("hello\n")
    sbx.commands.send_stdin(handle.pid, b"world\n")
    handle.close_stdin()
    r = handle.wait()
    assert (r.stdout, r.stderr, r.exit_code) == ("hello\nworld\n", "done\n", 0)
    assert handle.stdout == "hello\nworld\n"
    assert handle.exit_code == 0
    assert handle.pid not in [p.pid for p in sbx.commands.list()]


def test_background_close_stdin_by_pid(sbx: Sandbox) -> None:
    handle = sbx.commands.run("wc -c", background=True, stdin=True)
    sbx.commands.send_stdin(handle.pid, "12345")
    sbx.commands.close_stdin(handle.pid)
    assert handle.wait().stdout.strip() == "5"


def test_background_wait_calls_handlers_and_raises(sbx: Sandbox) -> None:
    out: list[str] = []
    handle = sbx.commands.run("echo a; exit 4", background=True, on_stdout=out.append)
    with pytest.raises(CommandExitError) as info:
        handle.wait()
    assert info.value.exit_code == 4
    assert "".join(out) == "a\n"


def test_iterate_handle(sbx: Sandbox) -> None:
    handle = sbx.commands.run("echo o; echo e >&2", background=True)
    outs, errs = [], []
    for stdout, stderr in handle:
        if stdout is not None:
            outs.append(stdout)
        if stderr is not None:
            errs.append(stderr)
    assert ("".join(outs), "".join(errs)) == ("o\n", "e\n")
    assert handle.exit_code == 0


def test_connect_to_running_process(sbx: Sandbox) -> None:
    first = sbx.commands.run("echo one; read line; echo two $line", background=True, stdin=True)
    for stdout, _ in first:
        if stdout and "one" in stdout:
            break
    first.disconnect()
    out: list[str] = []
    again = sbx.commands.connect(first.pid, on_stdout=out.append)
    sbx.commands.send_stdin(first.pid, "x\n")
    r = again.wait()
    assert r.stdout == "one\ntwo x\n"  # the buffered output is replayed, then the live output
    assert "".join(out) == r.stdout


def test_connect_to_missing_process(sbx: Sandbox) -> None:
    with pytest.raises(corral.ProcessNotFoundError):
        sbx.commands.connect(999999)


def test_kill_process(sbx: Sandbox) -> None:
    handle = sbx.commands.run("sleep 60", background=True)
    assert sbx.commands.kill(handle.pid) is True
    with pytest.raises(CommandExitError) as info:
        handle.wait()
    assert info.value.exit_code != 0
    assert sbx.commands.kill(handle.pid) is False


def test_handle_kill(sbx: Sandbox) -> None:
    handle = sbx.commands.run("sleep 60", background=True)
    assert handle.kill() is True
    with pytest.raises(CommandExitError) as info:
        handle.wait()
    assert info.value.error == "killed" or info.value.exit_code != 0


def test_send_signal(sbx: Sandbox) -> None:
    handle = sbx.commands.run(
        "trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 0.05; done", background=True
    )
    for stdout, _ in handle:
        if stdout and "ready" in stdout:
            break
    sbx.commands.send_signal(handle.pid, "SIGTERM")
    with pytest.raises(CommandExitError) as info:
        handle.wait()
    assert info.value.exit_code == 7
    assert "got-term" in info.value.stdout


def test_utf8_output(sbx: Sandbox) -> None:
    assert sbx.commands.run("printf 'h\\xc3\\xa9llo \\xe2\\x9c\\x93'").stdout == "héllo ✓"


# ----------------------------------------------------------------------------------- files


def test_write_and_read_text_and_bytes(sbx: Sandbox) -> None:
    info = sbx.files.write("/home/user/dir/a.txt", "héllo")
    assert isinstance(info, EntryInfo)
    assert (info.name, info.path, info.type, info.size) == ("a.txt", "/home/user/dir/a.txt", "file", 6)
    assert sbx.files.read("/home/user/dir/a.txt") == "héllo"
    sbx.files.write("/tmp/b.bin", b"\x00\xff\x01")
    assert sbx.files.read("/tmp/b.bin", format="bytes") == b"\x00\xff\x01"
    assert sbx.commands.run("cat /home/user/dir/a.txt").stdout == "héllo"


def test_write_file_object_and_iterable(sbx: Sandbox) -> None:
    sbx.files.write("/tmp/f", io.BytesIO(b"from a file"))
    assert sbx.files.read("/tmp/f") == "from a file"
    sbx.files.write("/tmp/g", iter([b"chunk1,", b"chunk2"]))
    assert sbx.files.read("/tmp/g") == "chunk1,chunk2"


def test_read_stream_is_chunks(sbx: Sandbox) -> None:
    sbx.commands.run("head -c 3000000 /dev/zero > /tmp/zeros")
    chunks = list(sbx.files.read("/tmp/zeros", format="stream"))
    assert len(chunks) > 1
    assert sum(len(c) for c in chunks) == 3_000_000


def _random_chunks(total: int, digest: Any) -> Iterator[bytes]:
    left = total
    while left:
        chunk = os.urandom(min(MiB, left))
        digest.update(chunk)
        left -= len(chunk)
        yield chunk


def test_large_upload_and_download_streamed(sbx: Sandbox) -> None:
    size = 50 * MiB
    sent = hashlib.sha256()
    info = sbx.files.write("/tmp/big.bin", _random_chunks(size, sent))
    assert info.size == size
    inside = sbx.commands.run("sha256sum /tmp/big.bin", timeout=60).stdout.split()[0]
    assert inside == sent.hexdigest()
    got, n = hashlib.sha256(), 0
    for chunk in sbx.files.read("/tmp/big.bin", format="stream"):
        assert len(chunk) <= 8 * MiB
        got.update(chunk)
        n += len(chunk)
    assert n == size
    assert got.hexdigest() == sent.hexdigest()


def test_list_exists_get_info(sbx: Sandbox) -> None:
    sbx.files.write("/tmp/t/one.txt", "1")
    sbx.files.write("/tmp/t/sub/two.txt", "22")
    sbx.commands.run("ln -s one.txt /tmp/t/link")
    names = {e.name: e for e in sbx.files.list("/tmp/t")}
    assert set(names) == {"one.txt", "sub", "link"}
    assert names["sub"].type == "dir"
    assert names["link"].type == "symlink" and names["link"].symlink_target == "one.txt"
    deep = {e.path for e in sbx.files.list("/tmp/t", depth=2)}
    assert "/tmp/t/sub/two.txt" in deep
    assert sbx.files.exists("/tmp/t/one.txt")
    assert not sbx.files.exists("/tmp/t/nope")
    info = sbx.files.get_info("/tmp/t/sub/two.txt")
    assert (info.type, info.size, info.owner) == ("file", 2, "user")
    assert info.permissions.startswith("rw")
    assert isinstance(info.modified_time, datetime)
    assert info.mode & 0o777


def test_make_dir_rename_remove(sbx: Sandbox) -> None:
    assert sbx.files.make_dir("/tmp/x/y") is True
    assert sbx.files.make_dir("/tmp/x/y") is False
    assert sbx.files.get_info("/tmp/x/y").type == "dir"
    sbx.files.write("/tmp/x/y/f", "data")
    moved = sbx.files.rename("/tmp/x/y/f", "/tmp/x/g")
    assert (moved.path, moved.name) == ("/tmp/x/g", "g")
    assert not sbx.files.exists("/tmp/x/y/f")
    assert sbx.files.read("/tmp/x/g") == "data"
    sbx.files.remove("/tmp/x")
    assert not sbx.files.exists("/tmp/x")


def test_file_permissions_follow_user(sbx: Sandbox) -> None:
    sbx.files.write("/root/secret", "s", user="root")
    with pytest.raises(corral.PermissionDeniedError):
        sbx.files.read("/root/secret")
    assert sbx.files.read("/root/secret", user="root") == "s"


# ---------------------------------------------------------------------------------- errors


def test_missing_file_raises_file_not_found(sbx: Sandbox) -> None:
    with pytest.raises(corral.FileNotFoundError):
        sbx.files.read("/tmp/does-not-exist")
    with pytest.raises(corral.FileNotFoundError):
        sbx.files.read("/tmp/does-not-exist", format="stream")
    with pytest.raises(corral.FileNotFoundError):
        sbx.files.get_info("/tmp/does-not-exist")
    with pytest.raises(corral.NotFoundError):
        sbx.files.remove("/tmp/does-not-exist")


def test_missing_sandbox_raises(api: dict[str, str]) -> None:
    with pytest.raises(SandboxNotFoundError):
        Sandbox.connect("sbx-does-not-exist", **api)
    assert Sandbox.kill_by_id("sbx-does-not-exist", **api) is False


def test_bad_key_raises_authentication_error(corral_server: Any) -> None:
    with pytest.raises(AuthenticationError):
        Sandbox.create(api_url=corral_server.url, api_key="wrong")
    with pytest.raises(AuthenticationError):
        Sandbox.list(api_url=corral_server.url, api_key="wrong")


def test_unreachable_server_raises_unavailable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(corral.UnavailableError, match="cannot reach corral"):
        Sandbox.create(api_url=url, api_key="k")


def test_commands_on_killed_sandbox_raise(api: dict[str, str]) -> None:
    sbx = Sandbox.create(**api)
    sbx.kill()
    with pytest.raises(corral.SandboxNotRunningError):
        sbx.commands.run("true")
    sbx.close()
