"""The agent over TCP (how backends with their own kernel reach it): real agent, real client."""

from __future__ import annotations

import asyncio
import os
import select
import socket
import subprocess
import time
from pathlib import Path

import pytest

from corral.agent import AGENT_PATH
from corral.agent.client import AgentClient
from corral.errors import UnavailableError

from .conftest import PYTHON


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(tmp_path: Path, port: int, allow_peer: str) -> subprocess.Popen[bytes]:
    r, w = os.pipe()
    proc = subprocess.Popen(
        [PYTHON, "-I", "-S", str(AGENT_PATH), "--socket", f"tcp:127.0.0.1:{port}", "--allow-peer", allow_peer,
         "--ready-fd", str(w), "--log", str(tmp_path / "agent.log")],
        pass_fds=(w,), stdin=subprocess.DEVNULL,
    )  # fmt: skip
    os.close(w)
    try:
        assert select.select([r], [], [], 10)[0], "agent not ready within 10 s"
        assert os.read(r, 100) == b"ready\n"
    finally:
        os.close(r)
    return proc


def test_the_agent_answers_its_allowed_peer_over_tcp(tmp_path: Path) -> None:
    port = free_port()
    proc = start(tmp_path, port, "127.0.0.1")
    try:
        client = AgentClient(f"tcp:127.0.0.1:{port}")

        async def run() -> bytes:
            await client.ping()
            out = b""
            async for event in client.exec("/bin/echo", ["over tcp"], user="root"):
                if event["type"] == "stdout":
                    out += event["data"]
            return out

        assert asyncio.run(run()) == b"over tcp\n"
    finally:
        proc.kill()
        proc.wait()


def test_the_agent_refuses_any_other_peer(tmp_path: Path) -> None:
    port = free_port()
    proc = start(tmp_path, port, "127.0.0.2")  # the client connects from 127.0.0.1
    try:
        with pytest.raises(UnavailableError):
            asyncio.run(AgentClient(f"tcp:127.0.0.1:{port}").ping())
        deadline = time.monotonic() + 5
        while "refused a connection from 127.0.0.1" not in (tmp_path / "agent.log").read_text():
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.wait()
