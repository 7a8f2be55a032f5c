"""Fixtures: a real agent process on the host, driven through the real AgentClient."""

from __future__ import annotations

import asyncio
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from corral.agent import AGENT_PATH
from corral.agent.client import AgentClient

# The sandbox runs Debian's python3; use the same interpreter when the host has it.
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


@dataclass
class Agent:
    proc: subprocess.Popen[bytes]
    socket: str
    log: Path
    start_seconds: float

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def client(self) -> AgentClient:
        return AgentClient(self.socket)

    def rss_kib(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS")


def start_agent(workdir: Path) -> Agent:
    sock = str(workdir / "agent.sock")
    log = workdir / "agent.log"
    r, w = os.pipe()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [PYTHON, "-I", "-S", str(AGENT_PATH), "--socket", sock, "--ready-fd", str(w), "--log", str(log)],
        pass_fds=(w,),
        stdin=subprocess.DEVNULL,
    )
    os.close(w)
    try:
        ready, _, _ = select.select([r], [], [], 10)
        assert ready, "agent did not become ready within 10 s"
        line = os.read(r, 100)
        elapsed = time.perf_counter() - t0
        assert line == b"ready\n", line
    finally:
        os.close(r)
    return Agent(proc, sock, log, elapsed)


def stop_agent(agent: Agent) -> None:
    # Kill whatever the test left running (processes live in their own sessions).
    try:
        procs = asyncio.run(agent.client.list())
    except Exception:
        procs = []
    for info in procs:
        try:
            os.killpg(info["pid"], 9)
        except OSError:
            pass
    agent.proc.kill()
    agent.proc.wait()


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    a = start_agent(tmp_path)
    try:
        yield a
    finally:
        stop_agent(a)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A root-owned 0755 directory every user can traverse (pytest's tmp_path is 0700)."""
    d = Path(tempfile.mkdtemp(prefix="corral-agent-test-", dir="/tmp"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
