"""The terminal WebSocket (``/v1/sandboxes/{id}/pty/ws``, for browsers) with a real WebSocket
client, and ``corral shell`` driven through a real pseudo-terminal, against the session server."""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from corral import Sandbox
from helpers import ServerProcess

pytestmark = pytest.mark.timeout(120)


def ws_url(server: ServerProcess, sandbox_id: str, query: str = "") -> str:
    return server.url.replace("http://", "ws://", 1) + f"/v1/sandboxes/{sandbox_id}/pty/ws{query}"


class Term:
    """A WebSocket terminal client: output bytes gathered, JSON control frames kept apart."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.output = ""
        self.frames: list[dict[str, Any]] = []

    def recv(self, timeout: float) -> bool:
        """One frame; False once the connection is closed."""
        try:
            frame = self.ws.recv(timeout=timeout)
        except ConnectionClosed:
            return False
        if isinstance(frame, bytes):
            self.output += frame.decode()
        else:
            self.frames.append(json.loads(frame))
        return True

    def until(self, needle: str, timeout: float = 15.0) -> None:
        start = len(self.output)
        deadline = time.monotonic() + timeout
        while needle not in self.output[start:]:
            left = deadline - time.monotonic()
            assert left > 0, f"{needle!r} not seen in {self.output[-800:]!r}"
            try:
                alive = self.recv(left)
            except TimeoutError:
                continue
            assert alive, f"closed before {needle!r}: {self.output[-800:]!r} {self.frames}"

    def frame(self, kind: str, timeout: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for f in self.frames:
                if f["type"] == kind:
                    self.frames.remove(f)
                    return f
            assert self.recv(max(0.01, deadline - time.monotonic())), f"closed before a {kind} frame"

    def send(self, **frame: Any) -> None:
        self.ws.send(json.dumps(frame))


def test_websocket_terminal(sbx: Sandbox, corral_server: ServerProcess) -> None:
    headers = {"X-API-Key": corral_server.api_key}
    with connect(ws_url(corral_server, sbx.sandbox_id, "?cols=80&rows=24"), additional_headers=headers) as ws:
        t = Term(ws)
        pid = t.frame("start")["pid"]
        assert pid > 0
        t.send(type="input", data="echo $((6*7))\r")
        t.until("42\r\n")
        t.send(type="input", data="stty size\r")
        t.until("24 80\r\n")
        t.send(type="resize", cols=120, rows=40)
        t.send(type="input", data="stty size\r")
        t.until("40 120\r\n")
        # Bad frames get an error frame; the session goes on.
        for bad in ("not json", json.dumps({"type": "nope"}), json.dumps({"type": "resize", "cols": 0, "rows": 5})):
            ws.send(bad)
            err = t.frame("error")
            assert err["code"] == "invalid_request" and err["message"]
        ws.send(b"binary input")
        assert t.frame("error")["code"] == "invalid_request"
        t.send(type="input", data="echo still-$((1+1))\r")
        t.until("still-2")
    # Closing the socket leaves the shell running; re-attach by pid (the output is replayed).
    with connect(ws_url(corral_server, sbx.sandbox_id, f"?pid={pid}"), additional_headers=headers) as ws:
        t = Term(ws)
        assert t.frame("start")["pid"] == pid
        t.until("still-2")
        t.send(type="input", data="echo back-$((2+3)); exit 7\r")
        t.until("back-5")
        end = t.frame("end")
        assert (end["exit_code"], end["error"]) == (7, None)
        assert not t.recv(5)  # then the server closes
        assert ws.close_code == 1000


def test_websocket_command_and_key_in_query(sbx: Sandbox, corral_server: ServerProcess) -> None:
    query = f"?cols=50&rows=7&cmd=stty%20size%3B%20exit%203&api_key={corral_server.api_key}"
    with connect(ws_url(corral_server, sbx.sandbox_id, query)) as ws:
        t = Term(ws)
        t.until("7 50\r\n")
        assert t.frame("end")["exit_code"] == 3


def test_websocket_refusals(sbx: Sandbox, corral_server: ServerProcess) -> None:
    for query, headers in (("", {}), ("?api_key=wrong", {}), ("", {"X-API-Key": "wrong"})):
        with connect(ws_url(corral_server, sbx.sandbox_id, query), additional_headers=headers) as ws:
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=10)
            assert ws.close_code == 4401
    # The query key is for the terminal WebSocket only: no other path takes it (HTTP or not).
    r = httpx.get(f"{corral_server.url}/v1/sandboxes?api_key={corral_server.api_key}")
    assert r.status_code == 401
    # An unknown sandbox or pid: an error frame, then a close with 4000 + the HTTP status.
    headers = {"X-API-Key": corral_server.api_key}
    cases = [("sbx-nope", "", 4404), (sbx.sandbox_id, "?pid=999999", 4404), (sbx.sandbox_id, "?cols=0", 4400)]
    for sandbox_id, query, close_code in cases:
        with connect(ws_url(corral_server, sandbox_id, query), additional_headers=headers) as ws:
            t = Term(ws)
            err = t.frame("error")
            assert err["message"], err
            assert not t.recv(5)
            assert ws.close_code == close_code, err


# ------------------------------------------------------------------ corral shell


def set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class Shell:
    """``corral shell`` on the slave side of a pseudo-terminal; the test types on the master."""

    def __init__(self, server: ServerProcess, *args: str, rows: int = 24, cols: int = 80) -> None:
        self.master, slave = os.openpty()
        set_size(self.master, rows, cols)
        env = {**os.environ, "CORRAL_API_URL": server.url, "CORRAL_API_KEY": server.api_key}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "corral.cli.main", "shell", *args],
            stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True,
        )
        os.close(slave)
        self.output = b""

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def until(self, needle: str, timeout: float = 20.0, line: bool = False) -> None:
        """Read until ``needle`` shows up (as a whole output line, not the echo of a typed command, with ``line``)."""
        start = len(self.output)
        deadline = time.monotonic() + timeout
        pattern = re.compile(rb"[\r\n]" + re.escape(needle.encode()) + rb"\r\n" if line else re.escape(needle.encode()))
        while not pattern.search(self.output, max(0, start - 1)):
            left = deadline - time.monotonic()
            assert left > 0, f"{needle!r} not seen in {self.output[-800:]!r}"
            if select.select([self.master], [], [], left)[0]:
                try:
                    data = os.read(self.master, 65536)
                except OSError:  # EIO: the CLI is gone
                    data = b""
                assert data, f"the CLI ended before {needle!r}: {self.output[-800:]!r}"
                self.output += data

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


def test_shell_cli_through_a_terminal(sbx: Sandbox, corral_server: ServerProcess) -> None:
    sh = Shell(corral_server, sbx.sandbox_id, rows=24, cols=80)
    try:
        sh.type("echo hi-from-shell\r")
        sh.until("hi-from-shell", line=True)
        sh.type("stty size\r")
        sh.until("24 80\r\n")
        # Ctrl-C goes through (raw mode): it interrupts the job in the sandbox, not the CLI.
        sh.type("sleep 100\r")
        time.sleep(0.3)
        sh.type("\x03")
        sh.type("echo alive-$((3+3))\r")
        sh.until("alive-6")
        assert sh.proc.poll() is None
        # A window resize: the new size on the terminal, SIGWINCH to the CLI, the sandbox follows.
        set_size(sh.master, 40, 120)
        sh.proc.send_signal(signal.SIGWINCH)
        deadline = time.monotonic() + 15
        while b"40 120\r\n" not in sh.output:
            assert time.monotonic() < deadline, sh.output[-800:]
            sh.type("stty size\r")
            try:
                sh.until("\r\n", timeout=1)
                sh.until("\r\n", timeout=1)
            except AssertionError:
                pass
        sh.type("exit 3\r")
        assert sh.proc.wait(timeout=20) == 3
        # The local terminal was left as it was found (cooked mode, echo on).
        attrs = termios.tcgetattr(sh.master)
        assert attrs[3] & termios.ICANON and attrs[3] & termios.ECHO
    finally:
        sh.close()


def test_shell_cli_with_a_command_and_piped_input(sbx: Sandbox, corral_server: ServerProcess) -> None:
    sh = Shell(corral_server, sbx.sandbox_id, "--cmd", "stty size; pwd; exit 9", "--cwd", "/tmp", rows=11, cols=33)
    try:
        sh.until("11 33\r\n/tmp\r\n")
        assert sh.proc.wait(timeout=20) == 9
    finally:
        sh.close()
    env = {**os.environ, "CORRAL_API_URL": corral_server.url, "CORRAL_API_KEY": corral_server.api_key}
    done = subprocess.run(
        [sys.executable, "-m", "corral.cli.main", "shell", sbx.sandbox_id],
        input=b"echo piped-$((2+2))\rexit 4\r", capture_output=True, env=env, timeout=60,
    )
    assert done.returncode == 4, done
    assert b"piped-4" in done.stdout
