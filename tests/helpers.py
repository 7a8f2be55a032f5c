"""Test helpers: a real corral server in a subprocess, and counting what sandboxes leave behind."""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
TEMPLATES_DIR = Path(os.environ.get("CORRAL_TEMPLATES_DIR", "/var/lib/corral/templates"))


def _terminate_with_parent() -> None:
    """If the test run dies (a timeout, ^C), its servers get SIGTERM and free their sandboxes."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll with a deadline (no blind sleeps)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


@dataclass
class ServerProcess:
    """`corral serve` on a loopback port, in its own data and run dirs."""

    name: str = field(default_factory=lambda: secrets.token_hex(3))
    pool_size: int = 2
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key = "test-" + secrets.token_hex(16)
        self.data_dir = Path(f"/var/tmp/corral-test-{self.name}")
        self.run_dir = Path(f"/run/corral-test-{self.name}")
        self.log_path = self.data_dir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            CORRAL_API_KEY=self.api_key,
            CORRAL_DATA_DIR=str(self.data_dir),
            CORRAL_RUN_DIR=str(self.run_dir),
            CORRAL_TEMPLATES_DIR=str(TEMPLATES_DIR),
            # microVM kernels, images and snapshots: content-keyed, shared with `make template`'s
            CORRAL_MICROVM_DIR=os.environ.get("CORRAL_MICROVM_DIR", str(TEMPLATES_DIR.parent / "microvm")),
            CORRAL_POOL_SIZE=str(self.pool_size),
            CORRAL_LOG_LEVEL="info",
            CORRAL_ISOLATION="namespace",  # the conformance suite asks for the other backends by name
        )
        env.update(self.extra_env)
        return env

    def start(self) -> ServerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "corral.cli.main", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=_terminate_with_parent,
            )
        wait_until(self._healthy, timeout=300, interval=0.05, what=f"corral server on {self.url} (log: {self.log_path})")
        return self

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
        try:
            return httpx.get(self.url + "/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        self.proc = None
        return code

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"X-API-Key": self.api_key}, timeout=60)

    def remove_dirs(self) -> None:
        shutil.rmtree(self.data_dir, ignore_errors=True)
        try:
            self.run_dir.rmdir()
        except OSError:
            pass


def leftovers(run_dir: Path, sandbox_ids: set[str] | None = None) -> dict[str, list[str]]:
    """What sandboxes under run_dir (or with these ids) left on the host."""
    tag = str(run_dir)
    found: dict[str, list[str]] = {}
    def ours(text: str) -> bool:
        return sandbox_ids is None or any(i in text for i in sandbox_ids)

    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines() if tag in line]
    found["mounts"] = [m for m in mounts if ours(m)]
    entries = [p.name for p in run_dir.iterdir() if p.is_dir()] if run_dir.is_dir() else []
    found["run_entries"] = [e for e in entries if ours(e)]
    if sandbox_ids:
        netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        found["netns"] = [line for line in netns.splitlines() if any(i in line for i in sandbox_ids)]
        from corral.backends.namespace.network import veth_name

        links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
        found["veths"] = [v for v in (veth_name(i) for i in sandbox_ids) if f" {v}@" in links or f" {v}:" in links]
        cgroups = []
        for top in [Path("/sys/fs/cgroup/corral"), *Path("/sys/fs/cgroup").glob("*/corral")]:
            for dirpath, dirnames, _ in os.walk(top):  # errors (a dir removed meanwhile) are ignored
                cgroups += [f"{dirpath}/{d}" for d in dirnames if any(i in d for i in sandbox_ids)]
        found["cgroups"] = cgroups
        procs = []
        for p in Path("/proc").iterdir():
            if p.name.isdigit():
                try:
                    cmdline = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                if any(i in cmdline for i in sandbox_ids) and int(p.name) != os.getpid():
                    procs.append(f"{p.name}: {cmdline[:120]}")
        found["processes"] = procs
    return {k: v for k, v in found.items() if v}


def assert_clean(run_dir: Path, sandbox_ids: set[str] | None = None, timeout: float = 30.0) -> None:
    """Wait (with a deadline) until the sandboxes left nothing behind; fail naming what remains."""
    deadline = time.monotonic() + timeout
    while True:
        left = leftovers(run_dir, sandbox_ids)
        if not left:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"left behind after {timeout} s: {left}")
        time.sleep(0.05)
