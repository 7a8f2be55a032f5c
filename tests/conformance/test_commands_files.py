"""Commands, files, terminals and watches on every backend."""

from __future__ import annotations

import secrets
import time

import pytest

from corral import CommandExitError, Sandbox
from corral import FileNotFoundError as CorralFileNotFound

from .conftest import run

pytestmark = pytest.mark.timeout(180)


def test_commands_stream_exit_codes_envs_cwd_and_users(shared: Sandbox) -> None:
    seen: list[str] = []
    r = shared.commands.run("echo out; echo err >&2; echo again", on_stdout=seen.append)
    assert (r.stdout, r.stderr, r.exit_code) == ("out\nagain\n", "err\n", 0)
    assert "".join(seen) == "out\nagain\n"
    with pytest.raises(CommandExitError) as failed:
        shared.commands.run("exit 7")
    assert failed.value.exit_code == 7
    r = shared.commands.run("echo $GREETING; pwd; id -un", envs={"GREETING": "hi"}, cwd="/tmp")
    assert r.stdout.split() == ["hi", "/tmp", "user"]
    assert shared.commands.run("id -u", user="root").stdout == "0\n"


def test_background_commands_stdin_and_kill(shared: Sandbox) -> None:
    h = shared.commands.run("read line; echo got:$line", background=True, stdin=True)
    shared.commands.send_stdin(h.pid, "ping\n")
    assert h.wait().stdout == "got:ping\n"
    sleeper = shared.commands.run("sleep 600", background=True)
    assert any(p.pid == sleeper.pid for p in shared.commands.list())
    assert shared.commands.kill(sleeper.pid) is True
    with pytest.raises(CommandExitError):
        sleeper.wait()


def test_files_round_trip(shared: Sandbox) -> None:
    d = f"/home/user/conf-{secrets.token_hex(3)}"
    shared.files.make_dir(d)
    blob = bytes(range(256)) * 4096  # 1 MiB, every byte value
    shared.files.write(f"{d}/blob.bin", blob)
    shared.files.write(f"{d}/note.txt", "héllo\n")
    assert shared.files.read(f"{d}/blob.bin", format="bytes") == blob
    assert shared.files.read(f"{d}/note.txt") == "héllo\n"
    assert sorted(e.name for e in shared.files.list(d)) == ["blob.bin", "note.txt"]
    assert shared.commands.run(f"sha256sum < {d}/blob.bin").stdout.split()[0] == __import__("hashlib").sha256(blob).hexdigest()
    shared.files.rename(f"{d}/note.txt", f"{d}/moved.txt")
    shared.files.remove(f"{d}/blob.bin")
    assert [e.name for e in shared.files.list(d)] == ["moved.txt"]
    with pytest.raises(CorralFileNotFound):
        shared.files.read(f"{d}/blob.bin")
    shared.files.remove(d)


def test_a_terminal_runs_a_shell(shared: Sandbox) -> None:
    h = shared.pty.create(cols=80, rows=24, envs={"PS1": "$ "})
    h.send_stdin("stty size; echo $((6*7)); exit 3\n")
    result = h.wait()
    assert "24 80\r\n" in result.stdout and "42\r\n" in result.stdout
    assert result.exit_code == 3


def test_a_watch_sees_changes(shared: Sandbox) -> None:
    d = f"/home/user/watched-{secrets.token_hex(3)}"
    shared.files.make_dir(d)
    with shared.files.watch_dir(d) as h:
        shared.files.write(f"{d}/a.txt", "x")
        deadline = time.monotonic() + 30
        for ev in h:
            if (ev.type, ev.path) == ("create", f"{d}/a.txt"):
                break
            assert time.monotonic() < deadline, "no create event"
    shared.files.remove(d)


def test_writes_never_reach_the_next_sandbox(isolation: str, conn: dict[str, str]) -> None:
    with Sandbox.create(isolation=isolation, **conn) as a:
        run(a, "echo changed > /etc/motd-corral; rm -f /usr/bin/git; echo x > /home/user/x", user="root")
    with Sandbox.create(isolation=isolation, **conn) as b:
        assert run(b, "cat /etc/motd-corral").exit_code != 0
        assert run(b, "test -x /usr/bin/git && test ! -e /home/user/x").exit_code == 0
