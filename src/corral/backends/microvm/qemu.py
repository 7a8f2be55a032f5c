"""QEMU's ``-M microvm``: the command line, its QMP monitor and its serial console.

Every guest of one snapshot must have the same machine (devices, memory, vCPUs, accelerator):
``argv`` builds it from a ``VMConfig`` and only file paths differ between the guest that was
snapshotted and the ones restored from it.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

QEMU = "qemu-system-x86_64"
# tsc_early_khz etc.: no calibration loops (slow under TCG); pci=off: microvm has no PCI.
CMDLINE = "console=ttyS0 panic=-1 quiet pci=off tsc_early_khz=2000000 tsc=reliable no_timer_check random.trust_cpu=on"
MAC = "52:54:00:c0:ff:ee"  # every guest sits alone on its own tap
TAP = "tap0"


@dataclass(frozen=True)
class VMConfig:
    kernel: Path
    initramfs: Path
    image: Path  # the template's ext4, read-only
    disk: Path  # the sandbox's qcow2
    memory_mb: int
    vcpus: int
    accel: str  # "kvm" or "tcg"
    qmp: Path
    console: Path
    runas: int | None = None  # uid=gid QEMU drops to once its files are open
    incoming_fd: int | None = None  # restore: the snapshot's migration stream
    extra_cmdline: str = ""


# Under TCG, the baseline x86-64 model: measured ~25% faster than "max" (no AVX etc. to emulate).
TCG_CPU = os.environ.get("CORRAL_MICROVM_TCG_CPU", "qemu64")


def accel_args(accel: str) -> list[str]:
    return ["-accel", "kvm", "-cpu", "host"] if accel == "kvm" else ["-accel", "tcg,tb-size=64", "-cpu", TCG_CPU]


def argv(c: VMConfig) -> list[str]:
    accel = accel_args(c.accel)
    a = [
        QEMU, "-M", "microvm,x-option-roms=off,rtc=on", *accel, "-m", str(c.memory_mb), "-smp", str(c.vcpus),
        "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
        "-kernel", str(c.kernel), "-initrd", str(c.initramfs), "-append", f"{CMDLINE} {c.extra_cmdline}".strip(),
        "-chardev", f"socket,id=con,path={c.console},server=on,wait=off", "-serial", "chardev:con",
        "-qmp", f"unix:{c.qmp},server=on,wait=off",
        # SECURITY: the template's image is shared by every guest: read-only at the device.
        "-drive", f"id=root,file={c.image},format=raw,if=none,readonly=on",
        "-device", "virtio-blk-device,drive=root",
        "-drive", f"id=disk,file={c.disk},format=qcow2,if=none,discard=unmap",
        "-device", "virtio-blk-device,drive=disk",
        "-netdev", f"tap,id=net,ifname={TAP},script=no,downscript=no",
        "-device", f"virtio-net-device,netdev=net,mac={MAC}",
        # SECURITY: QEMU itself is confined: a seccomp filter (no spawning, no obsolete calls,
        # no resource control) and, once its files are open, an unprivileged uid of its own.
        "-sandbox", "on,obsolete=deny,spawn=deny,resourcecontrol=deny",
    ]  # fmt: skip
    if c.runas is not None:
        a += ["-runas", f"{c.runas}:{c.runas}"]
    if c.incoming_fd is not None:
        a += ["-incoming", f"fd:{c.incoming_fd}"]
    return a


class QMPError(RuntimeError):
    pass


class QMP:
    """A blocking QMP client (run it in a thread); events are kept in ``events``."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                s.connect(str(path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                s.close()
                if time.monotonic() > deadline:
                    raise QMPError(f"QMP socket {path} did not appear") from None
                time.sleep(0.002)
        s.settimeout(timeout)
        self.timeout = timeout
        self.sock = s
        self.buf = b""
        self.events: list[dict[str, Any]] = []
        self._read()  # greeting
        self.command("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise QMPError("QEMU closed its monitor")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        msg: dict[str, Any] = json.loads(line)
        return msg

    def command(self, name: str, fds: list[int] | None = None, **arguments: Any) -> Any:
        self.sock.settimeout(self.timeout)
        data = json.dumps({"execute": name, "arguments": arguments} if arguments else {"execute": name}).encode()
        if fds:
            socket.send_fds(self.sock, [data], fds)
        else:
            self.sock.sendall(data)
        while True:
            msg = self._read()
            if "event" in msg:
                self.events.append(msg)
                continue
            if "error" in msg:
                raise QMPError(f"{name}: {msg['error'].get('desc')}")
            return msg.get("return")

    def wait_event(self, name: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for ev in self.events:
                if ev.get("event") == name:
                    self.events.remove(ev)
                    return ev
            left = deadline - time.monotonic()
            if left <= 0:
                raise QMPError(f"no {name} event within {timeout} s")
            self.sock.settimeout(left)
            try:
                self.events.append(self._read())
            except TimeoutError:
                raise QMPError(f"no {name} event within {timeout} s") from None

    def close(self) -> None:
        self.sock.close()


class Console:
    """The guest's serial console (a unix socket QEMU listens on): lines in, the recent tail kept."""

    def __init__(self) -> None:
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.tail: deque[str] = deque(maxlen=40)

    async def connect(self, path: Path, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.reader, self.writer = await asyncio.open_unix_connection(str(path), limit=2**20)
                return
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.002)

    async def send(self, line: str) -> None:
        assert self.writer is not None
        self.writer.write(line.encode() + b"\n")
        await self.writer.drain()

    async def wait_for(self, *markers: str) -> str:
        """The first console line starting with one of markers (or with CORRAL-ERROR)."""
        assert self.reader is not None
        while True:
            raw = await self.reader.readline()
            if not raw:
                raise EOFError("the console closed (QEMU exited)")
            line = raw.decode(errors="replace").rstrip("\r\n")
            if line.strip():
                self.tail.append(line)
            for m in (*markers, "CORRAL-ERROR"):
                if line.startswith(m):
                    return line

    def text(self) -> str:
        return " | ".join(self.tail)[-2000:] or "no console output"

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def read_log(path: Path, limit: int = 1500) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - limit))
            return f.read().decode(errors="replace").strip()
    except OSError:
        return ""


def spawn(argv_: list[str], netns: Path, log: Path, incoming: Path | None = None) -> int:
    """Start QEMU inside the network namespace at ``netns`` (its own session, stdout and stderr
    to ``log``, the snapshot file as fd 3 for ``-incoming fd:3``); returns its pid."""
    logfd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    snapfd = os.open(incoming, os.O_RDONLY | os.O_CLOEXEC) if incoming is not None else -1
    try:
        actions: list[tuple[Any, ...]] = [
            (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, logfd, 1),
            (os.POSIX_SPAWN_DUP2, logfd, 2),
        ]
        if snapfd >= 0:
            actions.append((os.POSIX_SPAWN_DUP2, snapfd, INCOMING_FD))
        # SECURITY: nsenter joins the sandbox's network namespace only, then execs QEMU (same pid):
        # the guest's tap is all the network QEMU has.
        return os.posix_spawnp(
            "nsenter", ["nsenter", f"--net={netns}", "--", *argv_],
            {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}, file_actions=actions, setsid=True,
        )  # fmt: skip
    finally:
        os.close(logfd)
        if snapfd >= 0:
            os.close(snapfd)


INCOMING_FD = 3
