"""The official `e2b` Python SDK (latest, from PyPI) against a real corral server: sandboxes,
commands, PTYs, files, watching, file URLs, listing, timeouts. No mocks."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

e2b = pytest.importorskip("e2b")

from e2b import (  # noqa: E402
    AsyncSandbox,
    AuthenticationException,
    CommandExitException,
    FileNotFoundException,
    FilesystemEventType,
    InvalidArgumentException,
    NotFoundException,
    PtySize,
    Sandbox,
    SandboxException,
    SandboxNotFoundException,
    SandboxQuery,
    TimeoutException,
)

from helpers import ServerProcess, wait_until  # noqa: E402

pytestmark = pytest.mark.privileged


def test_create_reports_what_the_sdk_needs(e2b_sbx: Sandbox) -> None:
    assert e2b_sbx.sandbox_id.isalnum() and e2b_sbx.sandbox_id.islower()
    info = e2b_sbx.get_info()
    assert info.template_id == "base" and info.state.value == "running"
    assert info.metadata == {"suite": "e2b-compat"}
    assert info.end_at > info.started_at
    assert e2b_sbx.is_running()


def test_commands_foreground(e2b_sbx: Sandbox) -> None:
    r = e2b_sbx.commands.run("echo out; echo err >&2; echo $GREETING from $(pwd)", envs={"GREETING": "hi"})
    assert r.exit_code == 0 and r.stderr == "err\n"
    assert r.stdout == "out\nhi from /home/user\n"
    seen: list[str] = []
    e2b_sbx.commands.run("for i in 1 2 3; do echo $i; done", on_stdout=seen.append)
    assert "".join(seen) == "1\n2\n3\n"
    assert e2b_sbx.commands.run("whoami", user="root").stdout == "root\n"
    assert e2b_sbx.commands.run("pwd", cwd="/tmp").stdout == "/tmp\n"
    with pytest.raises(CommandExitException) as exc:
        e2b_sbx.commands.run("echo before; exit 7")
    assert exc.value.exit_code == 7 and exc.value.stdout == "before\n"


def test_commands_output_edge_cases(e2b_sbx: Sandbox) -> None:
    broken = e2b_sbx.commands.run("printf '%8191s\\xe2' | tr ' ' a")
    assert broken.stdout == "a" * 8191 + "\ufffd"  # a broken UTF-8 tail is replaced, not lost
    assert e2b_sbx.commands.run("echo '!@#$%^&*()_+'").stdout == "!@#$%^&*()_+\n"
    assert e2b_sbx.commands.run("echo 'a\nb'").stdout == "a\nb\n"


def test_sandbox_envs(e2b_env: object) -> None:
    with Sandbox.create(envs={"FROM_SANDBOX": "yes"}) as sbx:
        assert sbx.commands.run("echo $FROM_SANDBOX $X", envs={"X": "1"}).stdout == "yes 1\n"


def test_kill_during_a_running_command(e2b_sbx: Sandbox) -> None:
    handle = e2b_sbx.commands.run("sleep 60", background=True)
    e2b_sbx.kill()
    with pytest.raises(SandboxException, match="sandbox was killed or reached its end of life"):
        handle.wait()


def test_background_timeout_while_iterating(e2b_sbx: Sandbox) -> None:
    handle = e2b_sbx.commands.run("sleep 10", timeout=2, background=True)
    with pytest.raises(TimeoutException):
        for _ in handle:
            pass


def test_commands_timeout_kills_the_command(e2b_sbx: Sandbox) -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutException):
        e2b_sbx.commands.run("sleep 30", timeout=1)
    assert time.monotonic() - started < 10
    # The SDK's own deadline may fire a moment before corral's kill.
    wait_until(lambda: "sleep 30" not in e2b_sbx.commands.run("ps -eo args").stdout, what="the command killed")


def test_commands_background_list_connect_kill(e2b_sbx: Sandbox) -> None:
    handle = e2b_sbx.commands.run("echo started; sleep 60", background=True)
    assert handle.pid > 0
    assert any(p.pid == handle.pid for p in e2b_sbx.commands.list())
    again = e2b_sbx.commands.connect(handle.pid)
    assert again.pid == handle.pid
    assert e2b_sbx.commands.kill(handle.pid) is True
    # Gone (E2B's own test checks at once; the signal is asynchronous here as in envd).
    wait_until(lambda: e2b_sbx.commands.run(f"kill -0 {handle.pid} || echo gone").stdout == "gone\n",
               what="the killed command gone")
    with pytest.raises(CommandExitException):
        handle.wait()
    wait_until(lambda: all(p.pid != handle.pid for p in e2b_sbx.commands.list()), what="the killed command gone")
    assert e2b_sbx.commands.kill(handle.pid) is False
    with pytest.raises(NotFoundException):
        e2b_sbx.commands.connect(999999)


def test_commands_stdin(e2b_sbx: Sandbox) -> None:
    handle = e2b_sbx.commands.run("cat", background=True, stdin=True)
    e2b_sbx.commands.send_stdin(handle.pid, "line one\n")
    handle.send_stdin("line two\n")
    handle.close_stdin()
    assert handle.wait().stdout == "line one\nline two\n"
    streamed = e2b_sbx.commands.run("cat", background=True, stdin=True)
    e2b_sbx.commands.stream_input(streamed.pid, iter([b"a", b"b\n"]))
    streamed.close_stdin()
    assert streamed.wait().stdout == "ab\n"


def test_pty_reconnect(e2b_sbx: Sandbox) -> None:
    terminal = e2b_sbx.pty.create(PtySize(rows=24, cols=80), envs={"FOO": "bar"})
    terminal.disconnect()
    again = e2b_sbx.pty.connect(terminal.pid)
    e2b_sbx.pty.send_stdin(terminal.pid, b"echo $FOO; exit\n")
    output = bytearray()
    result = again.wait(on_pty=output.extend)
    assert again.pid == terminal.pid and result.exit_code == 0 and b"bar" in output


def test_pty(e2b_sbx: Sandbox) -> None:
    terminal = e2b_sbx.pty.create(PtySize(rows=24, cols=80))
    e2b_sbx.pty.resize(terminal.pid, PtySize(rows=30, cols=100))
    e2b_sbx.pty.send_stdin(terminal.pid, b"stty size; echo $((6*7)); exit\n")
    output = bytearray()
    terminal.wait(on_pty=output.extend)
    text = output.decode(errors="replace")
    assert "30 100" in text and "42" in text
    sleeper = e2b_sbx.pty.create(PtySize(rows=24, cols=80))
    assert e2b_sbx.pty.kill(sleeper.pid) is True


def test_files(e2b_sbx: Sandbox) -> None:
    info = e2b_sbx.files.write("/home/user/dir/a.txt", "hello")
    assert info.path == "/home/user/dir/a.txt" and info.name == "a.txt"
    assert e2b_sbx.files.read("/home/user/dir/a.txt") == "hello"
    e2b_sbx.files.write("dir/b.bin", bytes(range(256)))  # relative to the user's home
    assert bytes(e2b_sbx.files.read("dir/b.bin", format="bytes")) == bytes(range(256))
    e2b_sbx.files.write_files([{"path": "/tmp/m/1.txt", "data": "one"}, {"path": "/tmp/m/2.txt", "data": "two"}])
    assert sorted(e.name for e in e2b_sbx.files.list("/tmp/m")) == ["1.txt", "2.txt"]
    names = {e.path for e in e2b_sbx.files.list("/home/user", depth=2)}
    assert {"/home/user/dir", "/home/user/dir/a.txt"} <= names
    stat = e2b_sbx.files.get_info("/home/user/dir/a.txt")
    assert stat.type is not None and stat.type.value == "file" and stat.size == 5 and stat.owner == "user"
    assert e2b_sbx.files.exists("/home/user/dir") and not e2b_sbx.files.exists("/home/user/nope")
    assert e2b_sbx.files.make_dir("/home/user/new/deep") is True
    assert e2b_sbx.files.make_dir("/home/user/new/deep") is False
    moved = e2b_sbx.files.rename("/home/user/dir/a.txt", "/home/user/new/a.txt")
    assert moved.path == "/home/user/new/a.txt"
    e2b_sbx.files.remove("/home/user/new")
    e2b_sbx.files.remove("/home/user/new")  # removing what is gone is fine, as in E2B
    assert not e2b_sbx.files.exists("/home/user/new")
    with pytest.raises(FileNotFoundException):
        e2b_sbx.files.read("/home/user/missing.txt")
    with pytest.raises(InvalidArgumentException):
        e2b_sbx.files.list("/home/user/dir/b.bin")



def test_file_metadata(e2b_sbx: Sandbox) -> None:
    written = e2b_sbx.files.write("meta.txt", "x", metadata={"Author": "me", "kind": "note"})
    assert written.path == "/home/user/meta.txt"
    assert e2b_sbx.files.get_info("meta.txt").metadata == {"author": "me", "kind": "note"}
    e2b_sbx.files.write("meta.txt", "y", metadata={"kind": "draft"})  # replaces the metadata
    assert e2b_sbx.files.get_info("meta.txt").metadata == {"kind": "draft"}
    e2b_sbx.files.write("meta.txt", "z")  # no metadata given: kept
    assert e2b_sbx.files.get_info("meta.txt").metadata == {"kind": "draft"}
    # The same extended attributes as E2B's envd: set inside, seen through the API.
    e2b_sbx.commands.run("python3 -c \"import os; os.setxattr('other.txt' if open('other.txt','w') else '', "
                         "'user.e2b.origin', b'inside')\"")
    assert [e.metadata for e in e2b_sbx.files.list("/home/user") if e.name == "other.txt"] == [{"origin": "inside"}]
    with pytest.raises(InvalidArgumentException):
        e2b_sbx.files.write("bad.txt", "x", metadata={"no spaces": "x"})


def test_entries_as_envd_reports_them(e2b_sbx: Sandbox) -> None:
    from e2b import FileType

    e2b_sbx.files.make_dir("tree/sub1/sub1_1")
    e2b_sbx.files.make_dir("tree/sub2")
    e2b_sbx.files.write("tree/file.txt", "Hello, World!")
    listed = e2b_sbx.files.list("tree", depth=2)
    assert [(e.name, e.path, e.type) for e in listed] == [
        ("file.txt", "/home/user/tree/file.txt", FileType.FILE),
        ("sub1", "/home/user/tree/sub1", FileType.DIR),
        ("sub1_1", "/home/user/tree/sub1/sub1_1", FileType.DIR),
        ("sub2", "/home/user/tree/sub2", FileType.DIR),
    ]
    f, d = listed[0], listed[1]
    assert (f.mode, f.permissions, f.owner, f.group, f.size) == (0o644, "-rw-r--r--", "user", "user", 13)
    assert (d.mode, d.permissions, d.size) == (0o755, "drwxr-xr-x", 0)
    assert f.modified_time is not None and f.symlink_target is None
    e2b_sbx.commands.run("ln -s tree/file.txt link")
    link = e2b_sbx.files.get_info("link")
    assert link.symlink_target == "tree/file.txt"


def test_read_and_write_forms(e2b_sbx: Sandbox) -> None:
    assert e2b_sbx.files.write_files([]) == []
    infos = e2b_sbx.files.write_files([{"path": f"many/{i}.txt", "data": f"file {i}"} for i in range(5)])
    assert [i.path for i in infos] == [f"/home/user/many/{i}.txt" for i in range(5)]
    assert e2b_sbx.files.read("many/3.txt") == "file 3"
    e2b_sbx.commands.run("touch empty.txt")
    assert e2b_sbx.files.read("empty.txt") == ""
    big = "streamed " * 20_000
    e2b_sbx.files.write("big.txt", big)
    stream = e2b_sbx.files.read("big.txt", format="stream")
    assert b"".join(stream).decode() == big
    partial = e2b_sbx.files.read("big.txt", format="stream")
    assert len(next(iter(partial))) > 0
    partial.close()
    with pytest.raises(FileNotFoundException):
        e2b_sbx.files.read("missing.txt", format="stream")
    assert e2b_sbx.commands.run("pwd", cwd="many").stdout == "/home/user/many\n"


def test_gzip_content_encoding(e2b_sbx: Sandbox) -> None:
    info = e2b_sbx.files.write("gz.txt", "zipped", gzip=True)
    assert info.path == "/home/user/gz.txt"
    assert e2b_sbx.files.read("gz.txt") == "zipped"
    assert e2b_sbx.files.read("gz.txt", gzip=True) == "zipped"
    assert b"".join(e2b_sbx.files.read("gz.txt", format="stream", gzip=True)) == b"zipped"
    infos = e2b_sbx.files.write_files([{"path": "g1.txt", "data": "1"}, {"path": "g2.txt", "data": "2"}], gzip=True)
    assert len(infos) == 2 and e2b_sbx.files.read("g2.txt") == "2"


def test_watch_dir_polled(e2b_sbx: Sandbox) -> None:
    e2b_sbx.files.make_dir("/home/user/w")
    handle = e2b_sbx.files.watch_dir("/home/user/w", recursive=True)
    e2b_sbx.files.write("/home/user/w/new.txt", "x")
    events = []

    def arrived() -> bool:
        events.extend(handle.get_new_events())
        return any(e.name == "new.txt" and e.type == FilesystemEventType.CREATE for e in events)

    wait_until(arrived, what="a create event")
    e2b_sbx.files.make_dir("/home/user/w/nested")
    e2b_sbx.files.write("/home/user/w/nested/deep.txt", "y")
    wait_until(lambda: arrived() and any(e.name == "nested/deep.txt" for e in events), what="a nested event")
    handle.stop()
    e2b_sbx.files.write("/home/user/file-not-dir", "x")
    with pytest.raises(SandboxException):
        e2b_sbx.files.watch_dir("/home/user/file-not-dir")
    with pytest.raises(NotFoundException):
        e2b_sbx.files.watch_dir("/home/user/not-there")


def test_watch_dir_streamed(e2b_env: object) -> None:
    async def main() -> None:
        sbx = await AsyncSandbox.create()
        try:
            await sbx.files.make_dir("/home/user/w")
            seen: list[object] = []
            handle = await sbx.files.watch_dir("/home/user/w", on_event=seen.append, include_entry=True)
            await sbx.files.write("/home/user/w/f.txt", "x")
            deadline = time.monotonic() + 10
            while not any(getattr(e, "name", "") == "f.txt" for e in seen):
                assert time.monotonic() < deadline, "no event for f.txt"
                await asyncio.sleep(0.05)
            await handle.stop()
            r = await sbx.commands.run("echo async")
            assert r.stdout == "async\n"
        finally:
            await sbx.kill()

    asyncio.run(main())


def test_file_urls_without_headers(e2b_sbx: Sandbox) -> None:
    e2b_sbx.files.write("/home/user/shared.txt", "shared")
    url = e2b_sbx.download_url("/home/user/shared.txt")
    assert "signature=" in url
    assert httpx.get(url).content == b"shared"
    up = e2b_sbx.upload_url("/home/user/up.txt")
    assert httpx.post(up, files={"file": ("/home/user/up.txt", b"uploaded")}).status_code == 200
    assert e2b_sbx.files.read("/home/user/up.txt") == "uploaded"
    expiring = e2b_sbx.download_url("/home/user/shared.txt", use_signature_expiration=60)
    assert httpx.get(expiring).status_code == 200
    expired = httpx.get(e2b_sbx.download_url("/home/user/shared.txt", use_signature_expiration=-120))
    assert expired.status_code == 401 and expired.json() == {"code": 401, "message": "signature is already expired"}
    assert httpx.get(url.replace("signature=v1_", "signature=v1_x")).status_code == 401
    assert httpx.get(url.replace("shared.txt", "other.txt")).status_code == 401


def test_list_paging_and_filters(e2b_env: object) -> None:
    sandboxes = [Sandbox.create(metadata={"paging": "yes", "n": str(i)}) for i in range(3)]
    try:
        query = SandboxQuery(metadata={"paging": "yes"})
        paginator = Sandbox.list(query=query, limit=2)
        first = paginator.next_items()
        assert len(first) == 2 and paginator.has_next
        second = paginator.next_items()
        assert len(second) == 1 and not paginator.has_next
        assert {s.sandbox_id for s in first + second} == {s.sandbox_id for s in sandboxes}
        assert Sandbox.list(query=SandboxQuery(metadata={"paging": "no"})).next_items() == []
        from e2b import SandboxState

        assert Sandbox.list(query=SandboxQuery(state=[SandboxState.PAUSED])).next_items() == []
    finally:
        for s in sandboxes:
            s.kill()


def test_timeout_really_expires(e2b_sbx: Sandbox) -> None:
    e2b_sbx.set_timeout(2)
    info = e2b_sbx.get_info()
    assert (info.end_at - info.started_at).total_seconds() < 300
    wait_until(lambda: not e2b_sbx.is_running(), timeout=15, what="the sandbox to expire")
    with pytest.raises(SandboxException):
        e2b_sbx.commands.run("true")
    with pytest.raises(SandboxNotFoundException):
        e2b_sbx.get_info()


def test_connect_kill_and_missing(e2b_sbx: Sandbox) -> None:
    again = Sandbox.connect(e2b_sbx.sandbox_id, timeout=600)
    assert again.commands.run("echo connected").stdout == "connected\n"
    assert (again.get_info().end_at - again.get_info().started_at).total_seconds() > 500
    assert Sandbox.kill(e2b_sbx.sandbox_id) is True
    assert not e2b_sbx.is_running()
    assert Sandbox.kill(e2b_sbx.sandbox_id) is False
    with pytest.raises(SandboxNotFoundException):
        Sandbox.connect(e2b_sbx.sandbox_id)
    with pytest.raises(SandboxNotFoundException):
        Sandbox.get_info("doesnotexist")


def test_pause_is_refused_cleanly(e2b_sbx: Sandbox) -> None:
    with pytest.raises(SandboxException, match="not supported by corral") as exc:
        e2b_sbx.pause()
    assert getattr(exc.value, "status_code", None) == 501
    with pytest.raises(SandboxException, match="not supported by corral"):
        Sandbox.create(lifecycle={"on_timeout": "pause"})
    assert e2b_sbx.is_running()


def test_metrics(e2b_sbx: Sandbox) -> None:
    before = e2b_sbx.get_metrics()
    assert len(before) == 1
    m = before[0]
    assert m.cpu_count == 1 and 0 <= m.cpu_used_pct <= 100
    assert 0 < m.mem_used <= m.mem_total and m.mem_cache >= 0
    assert 0 <= m.disk_used < m.disk_total <= 1100 * 2**20  # the 1 GiB writable layer
    e2b_sbx.commands.run("head -c 20000000 /dev/zero > /tmp/fill; timeout 1 sh -c 'while :; do :; done' || true")
    after = e2b_sbx.get_metrics()[0]
    assert after.disk_used >= m.disk_used + 19_000_000
    assert after.cpu_used_pct > 10  # a second of busy loop since the previous sample
    assert e2b_sbx.get_metrics(end=m.timestamp.replace(year=2000)) == []


def test_wrong_api_key_is_refused(e2b_env: object) -> None:
    with pytest.raises(AuthenticationException):
        Sandbox.create(api_key="e2b_0000")
    with pytest.raises(AuthenticationException):
        Sandbox.list(api_key="e2b_0000").next_items()


def test_unknown_template(e2b_env: object) -> None:
    with pytest.raises(SandboxException, match="not built"):
        Sandbox.create(template="no-such-template")


def test_code_interpreter_template_name_maps_to_corrals(e2b_env: object) -> None:
    try:
        sbx = Sandbox.create(template="code-interpreter-v1")
    except SandboxException as e:  # corral's code-interpreter template is not built on this machine
        assert "'code-interpreter' is not built" in str(e)
        return
    try:
        assert sbx.get_info().template_id == "code-interpreter-v1"
    finally:
        sbx.kill()


def test_internet_switch_and_limits(e2b_env: object) -> None:
    with Sandbox.create(allow_internet_access=False, timeout=120) as sbx:
        info = sbx.get_info()
        assert info.allow_internet_access is False and info.cpu_count == 1 and info.memory_mb == 512
        assert 100 <= (info.end_at - info.started_at).total_seconds() <= 125


def test_async_sdk(e2b_env: object) -> None:
    from e2b import AsyncSandbox

    async def main() -> None:
        sbx = await AsyncSandbox.create(metadata={"suite": "async"})
        try:
            r = await sbx.commands.run("echo $((1+2))")
            assert r.stdout == "3\n"
            handle = await sbx.commands.run("cat", background=True, stdin=True)
            await sbx.commands.send_stdin(handle.pid, "typed\n")
            await sbx.commands.close_stdin(handle.pid)
            assert (await handle.wait()).stdout == "typed\n"
            await sbx.files.write("/home/user/async.txt", "async")
            assert await sbx.files.read("/home/user/async.txt") == "async"
            assert "async.txt" in [e.name for e in await sbx.files.list("/home/user")]
            out = bytearray()
            term = await sbx.pty.create(PtySize(rows=24, cols=80), on_data=out.extend)
            await sbx.pty.send_stdin(term.pid, b"echo $((7*6)); exit\n")
            await term.wait()
            assert b"42" in out
            info = await sbx.get_info()
            assert info.metadata == {"suite": "async"}
            with pytest.raises(CommandExitException):
                await sbx.commands.run("false")
        finally:
            await sbx.kill()
        assert not await sbx.is_running()

    asyncio.run(main())


def test_parallel_clients_leave_nothing_behind(e2b_env: ServerProcess) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from helpers import assert_clean

    def one(i: int) -> str:
        with Sandbox.create(metadata={"parallel": str(i)}) as sbx:
            assert sbx.commands.run(f"echo {i}").stdout == f"{i}\n"
            sbx.files.write(f"/tmp/{i}.txt", str(i))
            assert sbx.files.read(f"/tmp/{i}.txt") == str(i)
            handle = sbx.files.watch_dir("/tmp")
            handle.stop()
            return sbx.sandbox_id

    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(one, range(8)))
    assert len(ids) == 8
    assert_clean(e2b_env.run_dir, ids)


def test_private_ports_with_a_traffic_token(e2b_env: ServerProcess) -> None:
    with Sandbox.create(network={"allow_public_traffic": False}) as sbx:
        token = sbx.traffic_access_token
        assert token
        sbx.commands.run("python3 -m http.server 8000", background=True, timeout=0)
        url, host = e2b_env.url + "/", {"Host": f"8000-{sbx.sandbox_id}.localhost"}  # corral's port URL
        wait_until(lambda: httpx.get(url, headers={**host, "e2b-traffic-access-token": token}).status_code == 200,
                   what="the server inside, with the token")
        assert httpx.get(url, headers=host).status_code in (401, 403)
        assert httpx.get(url, headers={**host, "e2b-traffic-access-token": "wrong"}).status_code in (401, 403)
    with Sandbox.create() as public:
        assert public.traffic_access_token is None


def test_network_rules_through_the_sdk(e2b_env: ServerProcess) -> None:
    with Sandbox.create(network={"deny_out": ["10.200.0.0/16"]}) as sbx, e2b_env.client() as corral_api:
        assert corral_api.get(f"/v1/sandboxes/{sbx.sandbox_id}/network").json()["deny_out"] == ["10.200.0.0/16"]
        sbx.update_network({"allow_out": ["10.200.1.1"], "deny_out": ["10.200.0.0/16"]})
        net = corral_api.get(f"/v1/sandboxes/{sbx.sandbox_id}/network").json()
        assert net["allow_out"] == ["10.200.1.1/32"] and net["deny_out"] == ["10.200.0.0/16"]
