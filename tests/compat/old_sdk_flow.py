"""An older e2b Python SDK (see E2B_OLD_VERSION in the Makefile) against corral; run by
test_e2b_old_sdk.py in that SDK's own venv. Prints "ok <step>" per step; fails loudly."""

import os
import time

import httpx
from e2b import CommandExitException, PtySize, Sandbox, SandboxException


def step(name: str) -> None:
    print(f"ok {name}", flush=True)


sbx = Sandbox.create(metadata={"suite": "old"})  # this SDK's create: POST /sandboxes
try:
    r = sbx.commands.run("echo old; echo err >&2")
    assert (r.stdout, r.stderr) == ("old\n", "err\n"), r
    try:
        sbx.commands.run("exit 4")
        raise AssertionError("no CommandExitException")
    except CommandExitException as e:
        assert e.exit_code == 4
    step("commands")

    bg = sbx.commands.run("cat", background=True, stdin=True)
    sbx.commands.send_stdin(bg.pid, "in\n")
    assert any(p.pid == bg.pid for p in sbx.commands.list())
    assert sbx.commands.kill(bg.pid)
    step("background, stdin, list, kill")

    out = bytearray()
    term = sbx.pty.create(PtySize(rows=24, cols=80))
    sbx.pty.send_stdin(term.pid, b"echo $((2*21)); exit\n")
    term.wait(on_pty=out.extend)
    assert b"42" in out, out
    step("pty")

    sbx.files.write("/home/user/old/a.txt", "A")
    assert sbx.files.read("/home/user/old/a.txt") == "A"
    assert [e.name for e in sbx.files.list("/home/user/old")] == ["a.txt"]
    assert sbx.files.exists("/home/user/old/a.txt")
    sbx.files.remove("/home/user/old")
    assert not sbx.files.exists("/home/user/old")
    watcher = sbx.files.watch_dir("/home/user")
    sbx.files.write("/home/user/w.txt", "w")
    watcher.stop()
    assert httpx.get(sbx.download_url("/home/user/w.txt")).content == b"w"
    step("files, watch, download url")

    again = Sandbox.connect(sbx.sandbox_id)  # this SDK's connect: POST /sandboxes/{id}/connect
    assert again.commands.run("echo again").stdout == "again\n"
    sbx.set_timeout(120)
    assert any(s.sandbox_id == sbx.sandbox_id for s in Sandbox.list().next_items())
    assert sbx.get_info().metadata == {"suite": "old"}
    step("connect, timeout, list, info")

    if os.environ.get("CORRAL_TEST_GET_HOST"):  # host-name mode: get_host(port) is a port URL
        sbx.commands.run("python3 -m http.server 8000", background=True, cwd="/home/user")
        url = f"https://{sbx.get_host(8000)}/"
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(url).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"{url} never answered 200"
            time.sleep(0.1)
        step("get_host")

    try:
        sbx.beta_pause()
        raise AssertionError("pause did not fail")
    except SandboxException as e:
        assert "not supported by corral" in str(e), e
    step("pause refused")
finally:
    sbx.kill()
assert not sbx.is_running()
step("kill")
