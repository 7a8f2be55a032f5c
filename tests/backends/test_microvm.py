"""The microVM backend on real QEMU guests (TCG on this host; no mocks).

One kernel, initramfs, template image and snapshot are shared by the module (cached under the
data dir, as `make template` prepares them). Network tests only reach loopback and addresses in
namespaces the tests create.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral import errors
from corral.agent.client import AgentClient
from corral.backends.base import Limits, SandboxHandle, SandboxSpec, SecretRule
from corral.backends.microvm import assets
from corral.backends.microvm.backend import MicroVMBackend
from corral.backends.namespace.backend import proc_start_time
from corral.templates import template_path
from helpers import TEMPLATES_DIR

from .nshelpers import leftovers, ok, sandbox, sh
from .test_namespace import _serve, outside  # noqa: F401  (a fixture)

pytestmark = pytest.mark.privileged

DATA_DIR = Path(os.environ.get("CORRAL_DATA_DIR", "/var/lib/corral"))


@pytest.fixture(scope="module")
def rootfs() -> Path:
    path = template_path(TEMPLATES_DIR, "base")
    assert (path / "usr/bin/python3").exists(), f"the base template at {path} has no python3"
    return path


@pytest.fixture(scope="module")
def run_dir() -> Iterator[Path]:
    path = Path(f"/run/corral-test-{secrets.token_hex(4)}")
    yield path
    vm_dir = Path(f"{path}-microvm")
    assert not [p for p in vm_dir.iterdir() if p.is_dir()] if vm_dir.exists() else True, "sandbox dirs left"
    shutil.rmtree(vm_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def backend(run_dir: Path, rootfs: Path) -> Iterator[MicroVMBackend]:
    b = MicroVMBackend(run_dir=run_dir, data_dir=DATA_DIR)
    assert b.probe().ok, b.probe().reason
    asyncio.run(b.ensure_snapshot(SandboxSpec("warmup", rootfs)))  # made once, cached across runs
    yield b
    asyncio.run(b.close())


def sid(prefix: str = "vm") -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def vm_leftovers(backend: MicroVMBackend, h: SandboxHandle | str, state: dict[str, Any] | None = None) -> list[str]:
    s = h if isinstance(h, str) else h.sandbox_id
    st = state if state is not None else ({} if isinstance(h, str) else h.state)
    found = leftovers(backend, s, st)  # type: ignore[arg-type]
    disk = backend.root / "sandboxes" / f"{s}.qcow2"
    if disk.exists():
        found.append(f"disk {disk}")
    return found


async def tcp_ok(h: SandboxHandle, host: str, port: int) -> bool:
    code, out, _ = await sh(h, f"timeout 3 bash -c 'exec 3<>/dev/tcp/{host}/{port}' && echo connected")
    return code == 0 and "connected" in out


# ---- lifecycle ---------------------------------------------------------------------------------


def test_restore_exec_files_and_isolation(backend: MicroVMBackend, rootfs: Path) -> None:
    marker = Path(f"/tmp/corral-host-marker-{secrets.token_hex(4)}")
    marker.write_text("host only")

    async def main() -> None:
        async with sandbox(backend, rootfs, sid(), Limits(memory_mb=512)) as h:
            assert h.state["restored"] is True
            assert str(h.agent_socket).startswith("tcp:")
            assert (await AgentClient(h.agent_socket).ping())["ok"] is True
            assert await backend.is_alive(h)
            # a kernel of its own; the host's /proc and files are not there
            guest_kernel = (await ok(h, "uname -r")).strip()
            assert guest_kernel != os.uname().release and guest_kernel.endswith("cloud-amd64")
            assert "corral/init.py" in await ok(h, "tr '\\0' ' ' < /proc/1/cmdline")
            code, _, _ = await sh(h, f"cat {marker}")
            assert code != 0
            assert "pytest" not in await ok(h, f"cat /proc/{os.getpid()}/cmdline 2>/dev/null; true")
            assert guest_kernel in await ok(h, "cat /proc/version")
            # files through the agent, as the user
            client = AgentClient(h.agent_socket)
            await client.write_file("/home/user/hello.txt", "user", b"hi from the host")
            assert (await ok(h, "cat /home/user/hello.txt; echo; stat -c %U /home/user/hello.txt", user="user")).split() == [
                "hi", "from", "the", "host", "user"]  # fmt: skip
            assert b"".join([c async for c in client.read_file("/home/user/hello.txt", user="user")]) == b"hi from the host"
            # memory and vCPUs as configured
            mem_kb = int((await ok(h, "grep MemTotal /proc/meminfo")).split()[1])
            assert 400 * 1024 < mem_kb <= 512 * 1024
            usage = await backend.usage(h)
            assert usage.memory_used > 0 and usage.disk_total == 1024 * 2**20
            waiter = asyncio.ensure_future(backend.wait_exit(h))
            await asyncio.sleep(0.05)
            assert not waiter.done()
            await backend.stop(h)
            await asyncio.wait_for(waiter, 10)
            assert not await backend.is_alive(h)
        await backend.cleanup(h)  # idempotent
        assert vm_leftovers(backend, h) == []

    try:
        asyncio.run(main())
    finally:
        marker.unlink()


def test_restored_sandboxes_have_their_own_identity(backend: MicroVMBackend, rootfs: Path) -> None:
    async def main() -> None:
        a = await backend.start(SandboxSpec(sid("a"), rootfs))
        b = await backend.start(SandboxSpec(sid("b"), rootfs))
        try:
            script = "hostname; cat /proc/sys/kernel/random/boot_id; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; date +%s.%N"
            ra, rb = (await ok(a, script)).split("\n"), (await ok(b, script)).split("\n")
            assert ra[0] == a.sandbox_id and rb[0] == b.sandbox_id
            assert ra[1] != rb[1], "boot ids are equal"
            assert ra[2] != rb[2], "both guests drew the same random bytes"
            for r in (ra, rb):
                assert abs(float(r[3]) - time.time()) < 5, f"guest clock {r[3]} is off the host's {time.time()}"
            # each has its own disk: a write in one is not seen by the other
            await ok(a, "echo mine > /root/only-a")
            code, _, _ = await sh(b, "cat /root/only-a")
            assert code != 0
            assert a.sandbox_id in await ok(a, "cat /etc/hosts")
        finally:
            await asyncio.gather(backend.cleanup(a), backend.cleanup(b))
        assert vm_leftovers(backend, a) == [] and vm_leftovers(backend, b) == []

    asyncio.run(main())


# ---- network -----------------------------------------------------------------------------------


def test_network_rules_apply(backend: MicroVMBackend, rootfs: Path, outside: tuple[str, int]) -> None:  # noqa: F811
    ns, port = outside
    anyaddr, any_port = _serve("0.0.0.0")

    async def main() -> None:
        async with sandbox(backend, rootfs, sid(), internet=False) as h:
            assert not await tcp_ok(h, "198.51.100.2", port)
            await backend.configure(h, Limits(), internet=True)
            assert await tcp_ok(h, "198.51.100.2", port)
            # SECURITY: the host itself stays unreachable
            assert not await tcp_ok(h, h.state["host_ip"], any_port)
            # a deny rule is enforced and counted
            await backend.set_network(h, True, [], ["198.51.100.2/32"])
            assert not await tcp_ok(h, "198.51.100.2", port)
            stats = await backend.network_stats(h)
            assert stats["blocked"] >= 1
            assert {"address": "198.51.100.2", "port": port} in [
                {k: d[k] for k in ("address", "port")} for d in stats["blocked_destinations"]]  # fmt: skip
            # secrets: the guest trusts the egress proxy's CA
            await backend.set_secrets(h, [SecretRule("CORRAL_SECRET_X", "value", ("example.com",))])
            assert backend._authority().pem().decode().strip().splitlines()[1] in await ok(
                h, "cat /etc/ssl/certs/ca-certificates.crt")  # fmt: skip
            await backend.set_secrets(h, [])
            await backend.set_network(h, False, [], [])
            assert not await tcp_ok(h, "198.51.100.2", port)
            # the host reaches servers inside at the sandbox's address (the port proxy's path)
            await ok(h, "nohup python3 -m http.server 8001 --bind 0.0.0.0 >/dev/null 2>&1 &")
            deadline = time.monotonic() + 20
            while subprocess.run(["python3", "-c", f"import socket; socket.create_connection(('{backend.address(h)}', 8001), 1)"],
                                 capture_output=True).returncode != 0:  # fmt: skip
                assert time.monotonic() < deadline, "the guest's server is not reachable from the host"
                await asyncio.sleep(0.2)
            # ...but nothing from outside does
            r = subprocess.run(["ip", "netns", "exec", ns, "python3", "-c",
                                f"import socket; socket.create_connection(('{h.state['ip']}', 8001), 1.5)"],
                               capture_output=True)  # fmt: skip
            assert r.returncode != 0
        assert vm_leftovers(backend, h) == []

    try:
        asyncio.run(main())
    finally:
        anyaddr.shutdown()


# ---- faults ------------------------------------------------------------------------------------


def test_qemu_killed_from_outside(backend: MicroVMBackend, rootfs: Path) -> None:
    async def main() -> None:
        async with sandbox(backend, rootfs, sid("kill")) as h:
            waiter = asyncio.ensure_future(backend.wait_exit(h))
            os.kill(int(h.state["pid"]), signal.SIGKILL)
            await asyncio.wait_for(waiter, 10)
            assert not await backend.is_alive(h)
            assert "killed by signal 9" in (await backend.exit_reason(h) or "")
        assert vm_leftovers(backend, h) == []
        assert proc_start_time(int(h.state["pid"])) != h.state["start_time"]

    asyncio.run(main())


def test_guest_without_python_fails_clearly(backend: MicroVMBackend, tmp_path: Path) -> None:
    bad = tmp_path / "rootfs"
    for d in ("bin", "etc", "run", "tmp", "proc", "sys", "dev"):
        (bad / d).mkdir(parents=True)
    vm = MicroVMBackend(run_dir=backend.run_dir.with_name(backend.run_dir.name.removesuffix("-microvm")),
                        data_dir=DATA_DIR, snapshots=False)  # fmt: skip
    s = sid("nopy")

    async def main() -> None:
        with pytest.raises(errors.SandboxFailedError, match="has no /usr/bin/python3"):
            await vm.start(SandboxSpec(s, bad))

    try:
        asyncio.run(main())
    finally:
        asyncio.run(vm.close())
        (vm.root / "images" / f"{assets.image_key([bad])}.ext4").unlink(missing_ok=True)
    assert vm_leftovers(vm, s) == []


def test_corrupt_kernel_fails_clearly(
    backend: MicroVMBackend, rootfs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CORRAL_MICROVM_DIR", raising=False)
    # A data dir whose cached kernel is garbage; everything else is the real one's.
    root = tmp_path / "microvm"
    kdir = root / "kernel" / backend.kernel_version
    kdir.mkdir(parents=True)
    (kdir / "vmlinux").write_bytes(b"\x7fELF" + os.urandom(4096))
    (kdir / "modules").symlink_to(backend.kernel_dir / "modules")
    for d in ("images", "disks"):
        (root / d).symlink_to(backend.root / d)
    shutil.copy(backend.root / "accel.json", root / "accel.json")
    vm = MicroVMBackend(run_dir=tmp_path / "run", data_dir=tmp_path, snapshots=False, boot_timeout=20)
    s = sid("badk")

    async def main() -> None:
        with pytest.raises(errors.SandboxFailedError, match="did not come up") as info:
            await vm.start(SandboxSpec(s, rootfs))
        assert "qemu" in str(info.value)

    try:
        asyncio.run(main())
    finally:
        asyncio.run(vm.close())
    assert vm_leftovers(vm, s) == []


def test_disk_full_inside_the_guest(backend: MicroVMBackend, rootfs: Path) -> None:
    vm = MicroVMBackend(run_dir=backend.run_dir.with_name(backend.run_dir.name.removesuffix("-microvm")),
                        data_dir=DATA_DIR, snapshots=False)  # fmt: skip

    async def main() -> None:
        h = await vm.start(SandboxSpec(sid("full"), rootfs, Limits(disk_mb=64)))
        try:
            assert h.state["restored"] is False  # a cold boot
            code, _, err = await sh(h, "dd if=/dev/zero of=/root/big bs=1M count=100", timeout=120)
            assert code != 0 and "No space left on device" in err
            assert (await ok(h, "echo still here")).strip() == "still here"
            assert await vm.is_alive(h)
            usage = await vm.usage(h)
            assert usage.disk_total == 64 * 2**20
        finally:
            await vm.cleanup(h)
        assert vm_leftovers(vm, h) == []

    try:
        asyncio.run(main())
    finally:
        asyncio.run(vm.close())


def test_reap_orphans_after_crash(backend: MicroVMBackend, rootfs: Path) -> None:
    async def main() -> None:
        crashed = MicroVMBackend(run_dir=backend.run_dir.with_name(backend.run_dir.name.removesuffix("-microvm")),
                                 data_dir=DATA_DIR)  # fmt: skip
        h = await crashed.start(SandboxSpec(sid("orphan"), rootfs))
        state = dict(h.state)
        # the "crashed" server never cleans up; a new one finds the VM and frees it
        fresh = MicroVMBackend(run_dir=backend.run_dir.with_name(backend.run_dir.name.removesuffix("-microvm")),
                               data_dir=DATA_DIR)  # fmt: skip
        reaped = await fresh.reap_orphans(keep=set())
        assert h.sandbox_id in reaped
        assert vm_leftovers(fresh, h.sandbox_id, state) == []
        await fresh.close()

    asyncio.run(main())


def test_another_server_reaping_leaves_live_guests_alone(backend: MicroVMBackend, rootfs: Path) -> None:
    """Servers sharing a data dir share its disk dir: one's startup must not reap the other's guests."""

    async def main() -> None:
        async with sandbox(backend, rootfs, sid("shared")) as h:
            stray = backend.root / "sandboxes" / f"{sid('stray')}.qcow2"
            stray.write_bytes(b"")  # a disk whose server is gone and whose QEMU is not running
            other = MicroVMBackend(run_dir=Path(f"/run/corral-test-{secrets.token_hex(4)}"), data_dir=DATA_DIR)
            try:
                assert h.sandbox_id not in await other.reap_orphans(keep=set())
                assert not stray.exists()
                assert await ok(h, "echo alive") == "alive\n"
            finally:
                await other.close()
        assert vm_leftovers(backend, h) == []

    asyncio.run(main())


def test_host_disk_full_fails_the_sandbox(
    backend: MicroVMBackend, rootfs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The host filesystem holding sandboxes' disk images is a 24 MiB tmpfs; the guest's own disk
    # (1 GiB) has room, so its writes reach the host until that fills.
    monkeypatch.delenv("CORRAL_MICROVM_DIR", raising=False)
    tmp_path = Path(f"/var/tmp/corral-test-{secrets.token_hex(4)}")  # QEMU's own uid must traverse it
    root = tmp_path / "microvm"
    root.mkdir(parents=True)
    tmp_path.chmod(0o711)
    for d in ("kernel", "initramfs", "images", "disks", "snapshots"):
        (root / d).symlink_to(backend.root / d)
    shutil.copy(backend.root / "accel.json", root / "accel.json")
    (root / "sandboxes").mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "corral-test-full", str(root / "sandboxes")], check=True)
    vm = MicroVMBackend(run_dir=tmp_path / "run", data_dir=tmp_path)

    async def main() -> None:
        h = await vm.start(SandboxSpec(sid("hostfull"), rootfs))
        try:
            waiter = asyncio.ensure_future(vm.wait_exit(h))
            await asyncio.sleep(0.2)  # the monitor watcher is connected
            # The agent's connection dies with the VM without a word: the writer is left behind.
            writer = asyncio.ensure_future(sh(h, "head -c 64M /dev/urandom > /root/big; sync", timeout=60))
            try:
                await asyncio.wait_for(waiter, 90)
            finally:
                writer.cancel()
                with contextlib.suppress(BaseException):
                    await writer
            assert "no space left on the host's disk" in (await vm.exit_reason(h) or "")
        finally:
            await vm.cleanup(h)
        assert vm_leftovers(vm, h) == []

    try:
        asyncio.run(main())
    finally:
        asyncio.run(vm.close())
        subprocess.run(["umount", str(root / "sandboxes")], check=False)
        shutil.rmtree(tmp_path, ignore_errors=True)
