"""Interactive terminals through the real server and real sandboxes: shells, full-screen
programs driven by keystrokes, resize, re-attach, kill, bad input; the sync and async SDK."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from corral import AsyncSandbox, PtyHandle, PtySize, Sandbox
from corral.sdk import AsyncPtyHandle

pytestmark = pytest.mark.timeout(120)

PROMPT_ENV = {"PS1": "$ "}
PROMPT = "\x1b[?2004h"  # bash turns bracketed paste on at each prompt

EDITOR = """\
import curses, curses.textpad, sys

def main(scr):
    scr.addstr(0, 0, "EDITOR READY")
    scr.refresh()
    text = curses.textpad.Textbox(curses.newwin(4, 60, 2, 0)).edit()  # Ctrl-G ends
    with open(sys.argv[1], "w") as f:
        f.write(text.strip() + "\\n")

curses.wrapper(main)
"""


def read_until(h: PtyHandle, needle: str, timeout: float = 15.0) -> str:
    """Consume the terminal's output until ``needle`` shows up (after what was read before)."""
    start = len(h.output)
    deadline = time.monotonic() + timeout
    if needle in h.output[start:]:
        return h.output
    for _chunk in h:
        if needle in h.output[start:]:
            return h.output
        assert time.monotonic() < deadline, f"{needle!r} not seen in {h.output[-800:]!r}"
    raise AssertionError(f"the terminal ended before {needle!r} showed up: {h.output[-800:]!r}")


async def aread_until(h: AsyncPtyHandle, needle: str, timeout: float = 15.0) -> str:
    start = len(h.output)

    async def consume() -> None:
        async for _chunk in h:
            if needle in h.output[start:]:
                return
        raise AssertionError(f"the terminal ended before {needle!r} showed up")

    await asyncio.wait_for(consume(), timeout)
    return h.output


def test_shell_session_size_and_resize(sbx: Sandbox) -> None:
    seen: list[str] = []
    h = sbx.pty.create(cols=80, rows=24, envs=PROMPT_ENV, on_data=seen.append)
    assert h.pid > 0
    h.send_stdin("echo $((6*7))\n")
    read_until(h, "42\r\n")
    h.send_stdin("stty size; echo $TERM; whoami\n")
    read_until(h, "24 80\r\n")
    read_until(h, "user\r\n")
    assert "xterm-256color" in h.output
    h.resize(cols=120, rows=40)
    sbx.pty.send_stdin(h.pid, b"stty size\n")
    read_until(h, "40 120\r\n")
    sbx.pty.resize(h.pid, 100, 30)
    h.send_stdin("stty size; exit 5\n")
    result = h.wait()
    assert "30 100\r\n" in result.stdout
    assert (result.exit_code, result.error, h.exit_code) == (5, None, 5)
    assert "".join(seen) == h.output  # on_data saw everything, as it came


def test_full_screen_programs_driven_by_keystrokes(sbx: Sandbox) -> None:
    h = sbx.pty.create(PtySize(rows=30, cols=100), envs=PROMPT_ENV)  # E2B spelling
    h.send_stdin("top -b -n1 | head -5; echo top-done-$((1+1))\n")
    out = read_until(h, "top-done-2")
    assert "load average" in out and "Tasks:" in out
    # top, interactive: it draws its screen and quits on "q"; the shell comes back.
    h.send_stdin("top -d 0.5\r")
    read_until(h, "load average")
    h.send_stdin("q")
    read_until(h, PROMPT)  # keys typed before top quits would be top's, not the shell's
    h.send_stdin("echo top-quit-$((1+2))\r")
    read_until(h, "top-quit-3")
    # less: G jumps to the end of the file, q quits.
    sbx.files.write("/home/user/lines.txt", "".join(f"line {i}\n" for i in range(1, 501)))
    h.send_stdin("less /home/user/lines.txt\r")
    read_until(h, "line 29")
    assert "line 500" not in h.output
    h.send_stdin("G")
    read_until(h, "line 500")
    h.send_stdin("q")
    read_until(h, PROMPT)
    # An editor (a curses Textbox; the base template has no vi): type, fix a typo, save with Ctrl-G.
    sbx.files.write("/home/user/edit.py", EDITOR)
    h.send_stdin("python3 edit.py note.txt\r")
    read_until(h, "EDITOR READY")
    h.send_stdin("hello from a terminak")
    h.send_stdin("\x08l\x07")  # Backspace, "l", Ctrl-G
    read_until(h, PROMPT)
    h.send_stdin("echo editor-done-$((2+2))\r")
    read_until(h, "editor-done-4")
    assert sbx.files.read("/home/user/note.txt") == "hello from a terminal\n"
    # A program that reads keys one at a time (raw mode), then is interrupted with Ctrl-C.
    h.send_stdin("read -n1 -s k; echo got-$k\r")  # the key waits in the terminal until read runs
    h.send_stdin("z")
    read_until(h, "got-z")
    h.send_stdin("sleep 100\r")
    h.send_stdin("\x03")  # Ctrl-C kills the foreground job, not the shell
    h.send_stdin("echo alive-$((3+3))\r")
    read_until(h, "alive-6")
    assert sbx.pty.kill(h.pid)
    assert h.wait().error == "killed"


def test_cmd_reattach_and_kill(sbx: Sandbox) -> None:
    h = sbx.pty.create(cols=80, rows=24, envs=PROMPT_ENV, timeout=60)
    h.send_stdin("echo before-$((1+1))\n")
    read_until(h, "before-2")
    h.disconnect()  # the client goes away: the terminal goes on
    sbx.pty.send_stdin(h.pid, "echo meanwhile-$((2+3))\n")
    again = sbx.pty.connect(h.pid)  # the buffered output is replayed, then live output
    read_until(again, "meanwhile-5")
    assert "before-2" in again.output  # the buffer was replayed first
    assert again.kill()
    result = again.wait()
    assert (result.exit_code, result.error) == (137, "killed")
    assert not sbx.pty.kill(h.pid)  # already gone
    # cmd: a program instead of a shell; its exit code is the result's, not raised.
    h = sbx.pty.create(cols=30, rows=7, cmd="stty size; tty; exit 4")
    result = h.wait()
    assert result.exit_code == 4 and "7 30\r\n/dev/pts/" in result.stdout


def test_bad_input_gets_4xx(sbx: Sandbox, api: dict[str, str]) -> None:
    base = f"{api['api_url']}/v1/sandboxes/{sbx.sandbox_id}/pty"
    with httpx.Client(headers={"X-API-Key": api["api_key"]}, timeout=30) as http:

        def check(method: str, url: str, status: int, code: str, **kw: object) -> None:
            r = http.request(method, url, **kw)  # type: ignore[arg-type]
            assert r.status_code == status, r.text
            body = r.json()
            assert body["code"] == code and body["message"], body

        check("POST", base, 400, "invalid_request", json={"cols": 0, "rows": 0})
        check("POST", base, 400, "invalid_request", json={"cols": 100000, "rows": 100000})
        check("POST", base, 400, "invalid_request", json={"cols": 80})
        check("POST", base, 400, "invalid_request", content=b"{not json", headers={"content-type": "application/json"})
        check("POST", f"{base}/999999/input", 404, "process_not_found", json={"data": "ls\n"})
        check("POST", f"{base}/999999/resize", 404, "process_not_found", json={"cols": 80, "rows": 24})
        check("POST", f"{base}/999999/resize", 400, "invalid_request", json={"cols": 0, "rows": 0})
        check("POST", f"{base}/999999/input", 400, "invalid_request", content=b"[", headers={"content-type": "application/json"})
        # A command without a terminal cannot be resized.
        bg = sbx.commands.run("sleep 30", background=True, timeout=60)
        check("POST", f"{base}/{bg.pid}/resize", 400, "invalid_request", json={"cols": 80, "rows": 24})
        bg.kill()
        # Input to a terminal that has ended.
        h = sbx.pty.create(cmd="true")
        assert h.wait().exit_code == 0
        check("POST", f"{base}/{h.pid}/input", 404, "process_not_found", json={"data": "x"})
        check("POST", f"{api['api_url']}/v1/sandboxes/nosuchsandbox/pty", 404, "sandbox_not_found",
              json={"cols": 80, "rows": 24})


def test_async_sdk(api: dict[str, str]) -> None:
    async def main() -> None:
        async with await AsyncSandbox.create(**api) as sbx:
            chunks: list[str] = []

            async def on_data(data: str) -> None:
                chunks.append(data)

            h = await sbx.pty.create(cols=90, rows=20, envs=PROMPT_ENV, on_data=on_data)
            await h.send_stdin("echo $((6*7)); stty size\n")
            await aread_until(h, "20 90\r\n")
            assert "42\r\n" in h.output
            await h.resize(50, 10)
            await h.send_stdin("stty size\n")
            await aread_until(h, "10 50\r\n")
            assert await h.kill()
            result = await h.wait()
            assert result.error == "killed" and result.exit_code != 0
            assert "".join(chunks) == h.output

    asyncio.run(main())


def test_a_long_terminal_session_keeps_bounded_output(sbx: Sandbox) -> None:
    """A handle keeps only the recent output (on_data sees everything), so long sessions do not grow."""
    from corral.sdk._sync.pty import PTY_KEEP

    total = [0]
    h = sbx.pty.create(cmd="head -c 3000000 /dev/zero | tr '\\\\0' 'x'", on_data=lambda d: total.__setitem__(0, total[0] + len(d)))
    result = h.wait()
    assert total[0] >= 3_000_000
    assert len(result.stdout) <= PTY_KEEP + 256 * 65536
