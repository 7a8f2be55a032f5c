"""Snapshots: a template's guest booted once, its agent up, saved; sandboxes start by restoring it.

    snapshots/<key>/state.bin     the running guest (QEMU's migration stream: RAM and devices)
    snapshots/<key>/disk.qcow2    the guest's disk as it was then (over disks/empty-<MiB>.ext4);
                                  never written again: every restored sandbox's disk chains on it,
                                  so the guest's memory (page cache, ext4 state) matches its disk
    snapshots/<key>/overlay.qcow2 an empty overlay of disk.qcow2, copied as each sandbox's disk
    snapshots/<key>/meta.json     what it was made from

``key`` hashes everything the saved guest depends on: the kernel, the initramfs (stage 1, the
guest's init, the agent's code), the template's image, memory, vCPUs, disk size and accelerator.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from . import qemu, vmnet


@dataclass(frozen=True)
class Snapshot:
    dir: Path

    @property
    def state(self) -> Path:
        return self.dir / "state.bin"

    @property
    def disk(self) -> Path:
        return self.dir / "disk.qcow2"

    @property
    def overlay(self) -> Path:
        return self.dir / "overlay.qcow2"


def snapshot_key(kernel: str, initramfs: Path, image: Path, memory_mb: int, vcpus: int, disk_mb: int, accel: str) -> str:
    parts = [kernel, initramfs.name, image.name, str(memory_mb), str(vcpus), str(disk_mb), *qemu.accel_args(accel), qemu.CMDLINE]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:20]


def find(root: Path, key: str) -> Snapshot | None:
    snap = Snapshot(root / "snapshots" / key)
    return snap if (snap.dir / "meta.json").is_file() else None


def qcow2_overlay(backing: Path, fmt: str, out: Path, size_mb: int | None = None) -> None:
    argv = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", fmt, "-b", str(backing)]
    if size_mb is not None:
        argv += ["-u", str(out), f"{size_mb}M"]  # the backing file may not exist yet
    else:
        argv.append(str(out))
    p = subprocess.run(argv, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"qemu-img create failed: {p.stderr.strip()[-500:]}")


async def create(
    root: Path, key: str, base: qemu.VMConfig, empty_disk: Path, disk_mb: int, boot_timeout: float
) -> Snapshot:
    """Boot a guest as configured, wait for its agent, save it; returns the snapshot."""
    final = Snapshot(root / "snapshots" / key)
    work = root / "snapshots" / f".{key}.{os.getpid()}.{secrets.token_hex(3)}"
    work.mkdir(parents=True)
    netns = f"corral-snap-{secrets.token_hex(4)}"
    pid = None
    console = qemu.Console()
    try:
        await asyncio.to_thread(qcow2_overlay, empty_disk, "raw", work / "disk.qcow2")
        await vmnet.create_bare(netns)
        cfg = qemu.VMConfig(**{**base.__dict__, "disk": work / "disk.qcow2", "qmp": work / "qmp.sock",
                               "console": work / "console.sock", "incoming_fd": None})  # fmt: skip
        pid = qemu.spawn(qemu.argv(cfg), vmnet.netns_path(netns), work / "qemu.log")
        await console.connect(cfg.console)
        try:
            line = await asyncio.wait_for(console.wait_for("CORRAL-BOOTED"), boot_timeout)
        except (TimeoutError, EOFError) as e:
            raise RuntimeError(f"the snapshot guest did not boot ({e or 'timeout'}): {console.text()} "
                               f"{qemu.read_log(work / 'qemu.log')}") from None  # fmt: skip
        if not line.startswith("CORRAL-BOOTED"):
            raise RuntimeError(f"the snapshot guest failed: {line}")
        await asyncio.to_thread(_save, cfg.qmp, work / "state.bin")
        await asyncio.to_thread(_wait_gone, pid, 10)
        pid = None
        await asyncio.to_thread(qcow2_overlay, final.disk, "qcow2", work / "overlay.qcow2", disk_mb)
        for f in ("qmp.sock", "console.sock"):
            (work / f).unlink(missing_ok=True)
        (work / "meta.json").write_text(json.dumps({"key": key, "created": time.time(), "memory_mb": base.memory_mb,
                                                     "vcpus": base.vcpus, "disk_mb": disk_mb, "accel": base.accel,
                                                     "image": str(base.image), "kernel": str(base.kernel),
                                                     "initramfs": str(base.initramfs)}))  # fmt: skip
        try:
            os.rename(work, final.dir)
        except OSError:  # another server made it first: use theirs
            shutil.rmtree(work, ignore_errors=True)
        return final
    finally:
        console.close()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            await asyncio.to_thread(_wait_gone, pid, 10)
        await vmnet.delete_netns(netns)
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


def collect(root: Path, keep_initramfs: Path) -> list[Path]:
    """Remove the snapshots and initramfs images of older agent or guest code (running guests keep
    the files they have open); returns what was removed."""
    removed = []
    for d in sorted((root / "snapshots").glob("*")):
        try:
            meta = json.loads((d / "meta.json").read_text())
        except (OSError, ValueError):
            continue
        if meta.get("initramfs") != str(keep_initramfs):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    for f in sorted((root / "initramfs").glob("*.cpio")):
        if f != keep_initramfs:
            f.unlink(missing_ok=True)
            removed.append(f)
    return removed


def _save(qmp_path: Path, out: Path) -> None:
    q = qemu.QMP(qmp_path, timeout=120)
    try:
        q.command("stop")
        q.command("migrate-set-parameters", None, **{"max-bandwidth": 2**40})
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            q.command("getfd", fds=[fd], fdname="snapshot")
        finally:
            os.close(fd)
        q.command("migrate", uri="fd:snapshot")
        while True:
            info = q.command("query-migrate")
            status = info.get("status")
            if status == "completed":
                break
            if status in ("failed", "cancelled"):
                raise RuntimeError(f"saving the snapshot failed: {info.get('error-desc', status)}")
            time.sleep(0.01)
        q.command("quit")
    finally:
        q.close()


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done:
            return
        time.sleep(0.01)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
