"""Helpers for the namespace backend tests: running commands through the agent, counting leftovers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from corral.agent.client import AgentClient
from corral.backends.base import Limits, SandboxHandle, SandboxSpec
from corral.backends.namespace import cgroups, network
from corral.backends.namespace.backend import NamespaceBackend, proc_start_time


async def sh(
    handle: SandboxHandle, script: str, user: str = "root", timeout: float = 30
) -> tuple[int | None, str, str]:
    """Run a bash script in the sandbox; (exit code, stdout, stderr)."""
    out, err, code = b"", b"", None
    async for ev in AgentClient(handle.agent_socket).exec(
        "/bin/bash", ["-c", script], user=user, timeout=timeout
    ):
        if ev["type"] == "stdout":
            out += ev["data"]
        elif ev["type"] == "stderr":
            err += ev["data"]
        elif ev["type"] == "end":
            code = ev["exit_code"]
    return code, out.decode(errors="replace"), err.decode(errors="replace")


async def ok(handle: SandboxHandle, script: str, user: str = "root", timeout: float = 30) -> str:
    code, out, err = await sh(handle, script, user, timeout)
    assert code == 0, f"exit {code}: {out}\n{err}"
    return out


@contextlib.asynccontextmanager
async def sandbox(
    backend: NamespaceBackend, rootfs: Path, sid: str, limits: Limits | None = None, internet: bool = False
) -> AsyncIterator[SandboxHandle]:
    h = await backend.start(SandboxSpec(sid, rootfs, limits or Limits(), internet))
    try:
        yield h
    finally:
        await backend.cleanup(h)


def leftovers(backend: NamespaceBackend, sid: str, state: dict[str, Any] | None = None) -> list[str]:
    """Everything of sandbox sid still on the host (empty list = nothing leaked)."""
    found = []
    sdir = backend.run_dir / sid
    if os.path.lexists(sdir):
        found.append(f"dir {sdir}")
    with open("/proc/self/mountinfo") as f:
        for line in f:
            if str(sdir) in line:
                found.append(f"mount {line.split()[4]}")
    for v in (1, 2):
        for d in cgroups.cgroup_dirs(v, sid):
            if d.exists():
                found.append(f"cgroup {d}")
    if network.netns_path(sid).exists():
        found.append(f"netns {network.netns_name(sid)}")
    veth = network.veth_name(sid)
    if Path(f"/sys/class/net/{veth}").exists():
        found.append(f"veth {veth}")
    out = subprocess.run(
        ["nft", "list", "set", "inet", "corral", "internet_on"], capture_output=True, text=True
    ).stdout
    if f'"{veth}"' in out:
        found.append(f"nft element {veth}")
    if state and state.get("pid") and proc_start_time(int(state["pid"])) == state.get("start_time"):
        found.append(f"process {state['pid']}")
    return found


async def can_connect(handle: SandboxHandle, host: str, port: int, timeout: float = 1.5) -> bool:
    code, out, _err = await sh(
        handle,
        f"python3 -c \"import socket; socket.create_connection(('{host}', {port}), timeout={timeout}); print('connected')\"",
    )
    return code == 0 and "connected" in out


async def wait_listening(handle: SandboxHandle, port: int, timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await can_connect(handle, "127.0.0.1", port, 0.5):
        assert asyncio.get_running_loop().time() < deadline, f"nothing listens on port {port} in the sandbox"
        await asyncio.sleep(0.05)
