"""The microVM backend: QEMU ``-M microvm`` + Debian's cloud kernel, one VM per sandbox.

Per sandbox, on the host::

    <run>-microvm/<id>/     root's, 0700: state.json, qemu.log, qmp.sock, console.sock
    <data>/microvm/sandboxes/<id>.qcow2   its disk (over the snapshot's disk, or an empty ext4)
    /run/netns/corral-<id>  veth crl<hash> (the namespace backend's), tap0 + NAT (vmnet.py),
                            where QEMU runs; cgroup(s) corral/<id> holding QEMU

The guest: the template's ext4 image read-only (shared), an overlay whose upper dir is on the
sandbox's own disk, the agent on TCP (AGENT_TCP_PORT) reached at the sandbox's address. A start
restores the template's snapshot (snapshot.py) and hands the guest its identity over the serial
console (guest_init.py); without a snapshot, it boots.

Egress rules, DNS filtering, network stats and addresses are the namespace backend's: the guest's
traffic leaves through the same host veth.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import secrets
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from ... import errors
from ...agent import AGENT_TCP_PORT
from ..base import Limits, Probe, SandboxHandle, SandboxSpec, SecretRule, Usage
from ..namespace import cgroups, network
from ..namespace.backend import ID_RE, NamespaceBackend, _limits_dict, proc_cpu_seconds, proc_start_time
from ..namespace.bwrap import CA_BUNDLE_INSIDE
from . import accel as accel_probe
from . import assets, qemu, snapshot, vmnet

log = logging.getLogger("corral.backends.microvm")

STATE_FILE = "state.json"
MIN_MEMORY_MB = 96  # Debian's cloud kernel does not boot in 64 MiB
QEMU_OVERHEAD_MB = 160  # QEMU itself (and TCG's translation cache) on top of the guest's memory
RUNAS_BASE = 0x40000000  # QEMU of the sandbox with address block i runs as uid/gid RUNAS_BASE + i


def vcpus_for(limits: Limits) -> int:
    return max(1, math.ceil(limits.cpu_count))


def memory_for(limits: Limits) -> int:
    return max(MIN_MEMORY_MB, int(limits.memory_mb))


class MicroVMBackend(NamespaceBackend):
    name = "microvm"
    fixed_limits = True  # the snapshot sets memory, vCPUs and disk size

    def __init__(
        self,
        run_dir: Path = Path("/run/corral"),
        data_dir: Path = Path("/var/lib/corral"),
        agent_path: Path | None = None,
        subnet: str = "10.213.0.0/16",
        ca_bundle: str | None = None,
        dns_upstream: str | None = None,
        snapshots: bool = True,
        accel: str | None = None,
        boot_timeout: float = 60.0,
        microvm_dir: Path | None = None,
    ) -> None:
        # A run dir of its own: the namespace backend takes every dir in its run dir for one of its sandboxes.
        super().__init__(Path(f"{run_dir}-microvm"), data_dir, agent_path, subnet, ca_bundle, dns_upstream)
        # Kernels, initramfs, images and snapshots are keyed by what they are made of: servers with
        # other data dirs may share them (settings.microvm_dir, e.g. the one `make template` prepared).
        self.root = Path(microvm_dir or os.environ.get("CORRAL_MICROVM_DIR") or self.data_dir / "microvm")
        self.snapshots = snapshots
        self.forced_accel = accel
        self.boot_timeout = boot_timeout
        self.accel = "tcg"
        self.kernel_version = ""
        self.initramfs: Path | None = None
        self._snap_locks: dict[str, asyncio.Lock] = {}
        self.last_timings: dict[str, float] = {}
        self._exit_status: dict[int, str] = {}  # pid -> how our QEMU child ended

    # ---- setup ---------------------------------------------------------------------------

    def probe(self) -> Probe:
        if os.geteuid() != 0:
            return Probe(False, "the microvm backend needs root")
        for tool in ("qemu-system-x86_64", "qemu-img", "nsenter", "nft", "ip", "mkfs.ext4", "cpio"):
            if shutil.which(tool, path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin") is None:
                return Probe(False, f"{tool} not found (apt-get install qemu-system-x86 qemu-utils e2fsprogs cpio)")
        if not assets.BUSYBOX.is_file():
            return Probe(False, "busybox-static is not installed")
        if not assets.cached_kernels(self.root) and not (shutil.which("apt-get") and shutil.which("lz4")):
            return Probe(False, "no cached guest kernel and no apt-get/lz4 to fetch one")
        if cgroups.detect_version() is None:
            return Probe(False, "no usable cgroup hierarchy")
        accel = self.forced_accel or accel_probe.cached(self.root)
        if accel == "kvm":
            return Probe(True, "KVM")
        note = "TCG (software emulation): slow, not for production" if accel else "KVM not probed yet (the first start does)"
        return Probe(True, note, production=False)

    def prepare(self) -> str:
        """Kernel and initramfs (blocking; cached): ``python -m corral.backends.microvm prepare``."""
        self.kernel_version = assets.ensure_kernel(self.root)
        self.initramfs = assets.ensure_initramfs(self.root, self.kernel_version, self.agent_path)
        if self.forced_accel:
            self.accel = self.forced_accel
        else:
            self.accel = accel_probe.choose(self.root, self.kernel_dir / "vmlinux", self.initramfs)
        return self.kernel_version

    @property
    def kernel_dir(self) -> Path:
        return assets.kernel_dir(self.root, self.kernel_version)

    async def _ensure_ready(self) -> None:
        if self._ready:
            return
        async with self._init_lock:
            if self._ready:
                return
            version = cgroups.detect_version()
            if version is None:
                raise errors.UnavailableError("no usable cgroup hierarchy")
            self._cg_version = version
            try:
                self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
                (self.root / "sandboxes").mkdir(parents=True, exist_ok=True)
                await asyncio.to_thread(self.prepare)
                await network.init_firewall(self.subnet)
            except Exception as e:
                raise errors.UnavailableError(f"microvm backend cannot start sandboxes here: {e}") from e
            self._ready = True

    async def template_assets(self, spec: SandboxSpec) -> tuple[Path, Path]:
        """(the template's image, the empty disk of the sandbox's size), made once."""
        await self._ensure_ready()
        lowers = [Path(p) for p in spec.lower_dirs()]
        for lower in lowers:
            if not lower.is_dir():
                raise errors.TemplateNotFoundError(f"template dir {lower} not found")
        image = await asyncio.to_thread(assets.ensure_image, self.root, lowers)
        empty = await asyncio.to_thread(assets.ensure_empty_disk, self.root, spec.limits.disk_mb)
        return image, empty

    def _config(self, image: Path, disk: Path, limits: Limits, sdir: Path, incoming: bool) -> qemu.VMConfig:
        assert self.initramfs is not None
        return qemu.VMConfig(
            kernel=self.kernel_dir / "vmlinux", initramfs=self.initramfs, image=image, disk=disk,
            memory_mb=memory_for(limits), vcpus=vcpus_for(limits), accel=self.accel,
            qmp=sdir / "qmp.sock", console=sdir / "console.sock",
            incoming_fd=qemu.INCOMING_FD if incoming else None,
        )  # fmt: skip

    async def ensure_snapshot(self, spec: SandboxSpec) -> snapshot.Snapshot:
        """The snapshot sandboxes of this template and size restore (made at the first start)."""
        image, empty = await self.template_assets(spec)
        assert self.initramfs is not None
        lim = spec.limits
        key = snapshot.snapshot_key(self.kernel_version, self.initramfs, image, memory_for(lim), vcpus_for(lim),
                                    lim.disk_mb, self.accel)  # fmt: skip
        found = snapshot.find(self.root, key)
        if found is not None:
            return found
        lock = self._snap_locks.setdefault(key, asyncio.Lock())
        async with lock:
            found = snapshot.find(self.root, key)
            if found is not None:
                return found
            log.info("making the microVM snapshot %s (template image %s)", key, image.name)
            base = self._config(image, Path("/nonexistent"), lim, self.root, incoming=False)
            return await snapshot.create(self.root, key, base, empty, lim.disk_mb, self.boot_timeout)

    # ---- start ---------------------------------------------------------------------------

    async def start(self, spec: SandboxSpec) -> SandboxHandle:
        sid = spec.sandbox_id
        if not ID_RE.match(sid):
            raise errors.InvalidRequestError(f"invalid sandbox id {sid!r}")
        _check_limits(spec.limits)
        t0 = time.perf_counter()
        image, empty = await self.template_assets(spec)
        snap = await self.ensure_snapshot(spec) if self.snapshots else None
        sdir = self.run_dir / sid
        try:
            # SECURITY: root's dir: QEMU's sockets and logs; nothing in it is the guest's to touch.
            self.run_dir.mkdir(mode=0o700, exist_ok=True)  # close() removes it once empty
            sdir.mkdir(mode=0o700)
        except FileExistsError:
            raise errors.ConflictError(f"sandbox {sid!r} already exists on this host") from None
        disk = self.root / "sandboxes" / f"{sid}.qcow2"
        handle = SandboxHandle(sid, sdir / "agent", {"backend": self.name, "dir": str(sdir), "disk_file": str(disk)})
        try:
            addr = self.pool.allocate(owner=str(sdir))
            handle.agent_socket = f"tcp:{addr.sandbox}:{AGENT_TCP_PORT}"
            handle.state.update({
                "agent_socket": str(handle.agent_socket),
                "template": str(spec.template_dir),
                "layers": [str(p) for p in spec.layers],
                "image": str(image),
                "snapshot": str(snap.dir) if snap else None,
                "netns": network.netns_name(sid),
                "veth": network.veth_name(sid),
                "ip_index": addr.index,
                "ip": addr.sandbox,
                "host_ip": addr.host,
                "cgroup_version": self._cg_version,
                "internet": spec.internet,
                "limits": _limits_dict(spec.limits),
                "accel": self.accel,
            })  # fmt: skip
            self._save_state(handle)
            return await self._start_vm(spec, handle, addr, image, empty, disk, snap, t0)
        except BaseException as e:
            reason = str(e) if isinstance(e, errors.SandboxFailedError) else f"{type(e).__name__}: {e}"
            with contextlib.suppress(Exception):
                await asyncio.shield(self.cleanup(handle))
            if isinstance(e, errors.CorralError) or not isinstance(e, Exception):
                raise
            raise errors.SandboxFailedError(f"sandbox {sid} failed to start: {reason}") from e

    async def _start_vm(
        self, spec: SandboxSpec, handle: SandboxHandle, addr: network.Addresses, image: Path, empty: Path,
        disk: Path, snap: snapshot.Snapshot | None, t0: float,
    ) -> SandboxHandle:  # fmt: skip
        sid, st = spec.sandbox_id, handle.state
        sdir = Path(st["dir"])
        cg = cgroups.SandboxCgroup(self._cg_version or 1, sid)

        def files_and_cgroup() -> None:
            if snap is not None:
                shutil.copyfile(snap.overlay, disk)  # an empty qcow2 over the snapshot's disk
            else:
                snapshot.qcow2_overlay(empty, "raw", disk)
            # SECURITY: the disk is the only file QEMU (once it dropped to its own uid) may write.
            os.chown(disk, RUNAS_BASE + addr.index, RUNAS_BASE + addr.index)
            os.chmod(disk, 0o600)
            cg.create()
            lim = spec.limits
            cg.set_limits(Limits(lim.cpu_count, memory_for(lim) + QEMU_OVERHEAD_MB, lim.disk_mb, lim.pids))

        async def net() -> None:
            await network.create(sid, addr)
            await vmnet.add_tap(st["netns"], addr.sandbox)

        results = await asyncio.gather(
            asyncio.to_thread(files_and_cgroup), net(), network.set_internet(st["veth"], spec.internet),
            return_exceptions=True,
        )
        for r in results:
            if isinstance(r, BaseException):
                raise r
        t1 = time.perf_counter()
        cfg = self._config(image, disk, spec.limits, sdir, incoming=snap is not None)
        cfg = qemu.VMConfig(**{**cfg.__dict__, "runas": RUNAS_BASE + addr.index})
        pid = qemu.spawn(qemu.argv(cfg), network.netns_path(sid), sdir / "qemu.log", snap.state if snap else None)
        self._children.add(pid)
        st["pid"], st["start_time"] = pid, proc_start_time(pid)
        self._save_state(handle)
        for procs in cg.procs_files():
            # SECURITY: QEMU (all its threads) is charged to and limited by the sandbox's cgroup.
            with open(procs, "w") as f:
                f.write(str(pid))
        console = qemu.Console()
        bring = asyncio.ensure_future(self._bring_up(handle, cfg, console, snap is not None))
        exited = asyncio.ensure_future(self._exited(pid))
        try:
            done, _ = await asyncio.wait({bring, exited}, timeout=self.boot_timeout, return_when=asyncio.FIRST_COMPLETED)
            if bring in done:
                line = bring.result()
            elif exited in done:
                raise EOFError(f"QEMU exited ({self._exit_status.get(pid, 'gone')})")
            else:
                raise TimeoutError
        except (TimeoutError, EOFError, OSError, qemu.QMPError) as e:
            why = f"no answer within {self.boot_timeout:g} s" if isinstance(e, TimeoutError) else str(e)
            raise errors.SandboxFailedError(
                f"sandbox {sid} failed to start: the guest did not come up ({why}); console: {console.text()}; "
                f"qemu: {qemu.read_log(sdir / 'qemu.log') or '-'}"
            ) from None
        finally:
            for fut in (bring, exited):
                fut.cancel()
            console.close()
        if not line.startswith("CORRAL-OK"):
            raise errors.SandboxFailedError(f"sandbox {sid} failed to start: {line}; console: {console.text()}")
        t2 = time.perf_counter()
        resumed = st.pop("resumed_at", None)
        st["timings_ms"] = self.last_timings = {
            "prepare": round((t1 - t0) * 1000, 2),  # disk, network, cgroup
            **({"qemu_restore": round((resumed - t1) * 1000, 2)} if resumed else {}),
            "guest_ready": round((t2 - (resumed or t1)) * 1000, 2),  # (boot and) the identity request's answer
        }
        st["restored"] = snap is not None
        self._save_state(handle)
        return handle

    async def set_secrets(self, handle: SandboxHandle, secrets: list[SecretRule]) -> None:
        await super().set_secrets(handle, secrets)
        if secrets and not handle.state.get("egress_ca"):
            # The egress proxy presents corral's CA for the hosts a secret goes to: the guest's
            # system bundle (the host's CAs, as a namespace sandbox sees them) gets it too.
            from ...agent.client import AgentClient

            host = self.ca_bundle.read_bytes().rstrip(b"\n") + b"\n" if self.ca_bundle else b""
            await AgentClient(handle.agent_socket).write_file(CA_BUNDLE_INSIDE, "root", host + self._authority().pem())
            handle.state["egress_ca"] = True
            with contextlib.suppress(OSError):
                self._save_state(handle)

    async def _exited(self, pid: int) -> None:
        """Return when our QEMU child has exited (reaped)."""
        while not self._reap(pid):
            await asyncio.sleep(0.02)

    async def _bring_up(self, handle: SandboxHandle, cfg: qemu.VMConfig, console: qemu.Console, restore: bool) -> str:
        """Restore: wait until the guest runs again; boot: until its agent is up. Then its identity,
        the agent's first request (its answer also says the agent serves)."""
        from ...agent.client import AgentClient

        await console.connect(cfg.console)
        if restore:
            await asyncio.to_thread(_wait_resumed, cfg.qmp)
            handle.state["resumed_at"] = time.perf_counter()
        else:
            line = await console.wait_for("CORRAL-BOOTED")
            if not line.startswith("CORRAL-BOOTED"):
                return line
        ident = {
            "hostname": handle.sandbox_id, "sandbox_id": handle.sandbox_id, "seed": secrets.token_hex(64),
            "resolv": network.resolv_conf(), "time": time.time(),
        }  # fmt: skip
        agent = AgentClient(handle.agent_socket, connect_timeout=self.boot_timeout)
        identity = asyncio.ensure_future(agent.identity(ident))
        failed = asyncio.ensure_future(console.wait_for("CORRAL-ERROR"))
        try:
            done, _ = await asyncio.wait({identity, failed}, return_when=asyncio.FIRST_COMPLETED)
            if identity in done:
                try:
                    identity.result()
                except errors.CorralError as e:
                    return f"CORRAL-ERROR identity: {e}"
                handle.state["identity_sent"] = True
                return "CORRAL-OK"
            return failed.result()
        finally:
            identity.cancel()
            failed.cancel()

    # ---- running sandboxes ---------------------------------------------------------------

    async def configure(self, handle: SandboxHandle, limits: Limits, internet: bool) -> None:
        _check_limits(limits)
        st = handle.state
        old = st.get("limits") or {}
        if old.get("memory_mb") is not None and memory_for(limits) != memory_for(Limits(memory_mb=old["memory_mb"])):
            raise errors.InvalidRequestError("a microVM's memory is fixed when it starts")
        if old.get("cpu_count") != limits.cpu_count:
            cg = cgroups.SandboxCgroup(int(st["cgroup_version"]), handle.sandbox_id)
            try:
                cg.set_limits(Limits(limits.cpu_count, memory_for(limits) + QEMU_OVERHEAD_MB, limits.disk_mb, limits.pids))
            except OSError as e:
                raise errors.InvalidRequestError(f"cannot apply limits {limits}: {e}") from None
        if st.get("internet") is not internet:
            await network.set_internet(st["veth"], internet)
        st["limits"] = {**_limits_dict(limits), "disk_mb": old.get("disk_mb", limits.disk_mb)}
        st["internet"] = internet
        with contextlib.suppress(OSError):
            self._save_state(handle)

    async def usage(self, handle: SandboxHandle) -> Usage:
        st = handle.state
        cg = cgroups.SandboxCgroup(int(st["cgroup_version"]), handle.sandbox_id)
        try:
            used, cache, _ = cg.memory()
            blocks = os.stat(st["disk_file"]).st_blocks * 512
        except (OSError, ValueError) as e:
            raise errors.UnavailableError(f"cannot read the usage of sandbox {handle.sandbox_id}: {e}") from None
        limits = st.get("limits") or {}
        cpu = sum(proc_cpu_seconds(pid) for pid in cg.pids())
        return Usage(
            cpu_seconds=cpu, memory_used=used, memory_cache=cache,
            memory_limit=memory_for(Limits(memory_mb=int(limits.get("memory_mb", 512)))) * 2**20,
            disk_used=blocks, disk_total=int(limits.get("disk_mb", 1024)) * 2**20,
        )  # fmt: skip

    async def exit_reason(self, handle: SandboxHandle) -> str | None:
        """Why the VM ended, for the record (QEMU's log, or how it died)."""
        if handle.state.get("failure"):
            return str(handle.state["failure"])
        text = qemu.read_log(Path(handle.state.get("dir", "")) / "qemu.log", 600)
        status = handle.state.get("exit_status")
        how = f"QEMU exited ({status})" if status else "QEMU exited"
        return f"{how}: {text}" if text else how

    def _reap(self, pid: int) -> bool:
        if pid not in self._children:
            return True
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done, status = pid, 0
        if done:
            self._children.discard(pid)
            self._exit_status[pid] = _describe(status)
        return bool(done)

    async def wait_exit(self, handle: SandboxHandle) -> None:
        watcher = asyncio.ensure_future(self._watch_monitor(handle))
        try:
            await super().wait_exit(handle)
        finally:
            watcher.cancel()
        pid = handle.state.get("pid")
        if pid:
            # The base class returns as soon as QEMU's main thread is a zombie; its other threads
            # may still be exiting (waitpid finds nothing yet): reap it here, status and all.
            deadline = time.monotonic() + 5
            while not self._reap(int(pid)) and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
        if pid and int(pid) in self._exit_status:
            handle.state["exit_status"] = self._exit_status.pop(int(pid))

    async def _watch_monitor(self, handle: SandboxHandle) -> None:
        """QEMU's events while the sandbox runs: a write its host could not do (the disk holding
        its image is full: QEMU pauses the guest) ends the VM, with that reason."""
        path = Path(handle.state.get("dir", "")) / "qmp.sock"
        try:
            reader, writer = await asyncio.open_unix_connection(str(path), limit=2**20)
        except OSError:
            return
        try:
            await reader.readline()
            writer.write(b'{"execute": "qmp_capabilities"}\n')
            await writer.drain()
            while line := await reader.readline():
                msg = json.loads(line)
                if msg.get("event") != "BLOCK_IO_ERROR":
                    continue
                data = msg.get("data") or {}
                why = "no space left on the host's disk" if data.get("nospace") else data.get("reason", "I/O error")
                handle.state["failure"] = f"QEMU could not write the sandbox's disk image: {why}"
                log.warning("sandbox %s: %s", handle.sandbox_id, handle.state["failure"])
                pid, start = handle.state.get("pid"), handle.state.get("start_time")
                if pid and proc_start_time(int(pid)) == start:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
                return
        except (OSError, ValueError):
            return
        finally:
            writer.close()

    async def stop(self, handle: SandboxHandle) -> None:
        await super().stop(handle)  # SIGKILL to every process of its cgroup: QEMU
        if handle.state.get("ip"):
            # A dead guest sends no TCP reset: abort the host's connections to its agent so that
            # the streams waiting on them end now.
            await network.run(["ss", "-K", "dst", str(handle.state["ip"])], check=False)

    async def cleanup(self, handle: SandboxHandle) -> None:
        """The namespace backend's (QEMU killed with its cgroup, network, cgroups, files), then the disk."""
        sid, st = handle.sandbox_id, handle.state
        failures = []
        try:
            await super().cleanup(handle)
        except errors.CorralError as e:
            failures.append(str(e))
        disk = Path(st.get("disk_file") or self.root / "sandboxes" / f"{sid}.qcow2")
        try:
            disk.unlink(missing_ok=True)
        except OSError as e:
            failures.append(f"disk: {e}")
        if failures:
            raise errors.CorralError(f"cleanup of sandbox {sid} incomplete: {'; '.join(failures)}")

    def handle_from_state(self, sandbox_id: str, state: dict[str, Any]) -> SandboxHandle:
        state = dict(state)
        sdir = Path(state.get("dir") or self.run_dir / sandbox_id)
        state.setdefault("dir", str(sdir))
        if state.get("ip_index") is not None:
            self.pool.mark_used(int(state["ip_index"]), owner=str(sdir))
        return SandboxHandle(sandbox_id, state.get("agent_socket") or sdir / "agent", state)

    async def reap_orphans(self, keep: set[str]) -> list[str]:
        # No _ensure_ready: a server starting up must not fetch a kernel or probe KVM to find orphans.
        self._cg_version = self._cg_version or cgroups.detect_version()
        ids = {p.name for p in _iterdir(self.run_dir) if p.is_dir() and not p.is_symlink()}
        # The disk dir is shared by every server using this data dir (each has its own run dir): a disk
        # with no sandbox dir here is another server's while a QEMU holds it open, else a leftover.
        disks = [p for p in _iterdir(self.root / "sandboxes") if p.name.endswith(".qcow2")]
        stray = [p for p in disks if p.name.removesuffix(".qcow2") not in ids | set(keep)]
        held = _open_files() if stray else set()
        for p in stray:
            if str(p) not in held:
                p.unlink(missing_ok=True)
        # Netns of snapshot guests whose server died while making one.
        for name in network.list_netns_ids():
            if name.startswith("snap-"):
                await vmnet.delete_netns(network.NETNS_PREFIX + name)
        for p in _iterdir(self.root / "snapshots"):
            if p.name.startswith(".") and p.name.split(".")[2:3] and not _pid_alive(p.name.split(".")[2]):
                shutil.rmtree(p, ignore_errors=True)
        return await self._reap_sandboxes(ids, keep)

    async def close(self) -> None:
        if self._resolver is not None:
            if self._resolver[0].transport is not None:
                self._resolver[0].transport.close()
            self._resolver = None
        if self._proxy is not None:
            await self._proxy[0].close()
            self._proxy = None
        self._ready = False
        with contextlib.suppress(OSError):
            self.run_dir.rmdir()  # only if no sandbox is left
        cgroups.remove_parents()


def _wait_resumed(qmp_path: Path) -> None:
    """Until the incoming snapshot is loaded; then run the guest (it was saved paused)."""
    q = qemu.QMP(qmp_path, timeout=30)
    try:
        while True:
            status = q.command("query-status").get("status")
            if status == "running":
                return
            if status == "inmigrate":
                # No MIGRATION events unless asked for: in effect a short pause between polls.
                with contextlib.suppress(qemu.QMPError):
                    q.wait_event("MIGRATION", 0.002)
                continue
            if status in ("paused", "postmigrate", "prelaunch"):
                q.command("cont")
                return
            raise qemu.QMPError(f"the restored guest is {status}")
    finally:
        q.close()


def _check_limits(limits: Limits) -> None:
    if not (limits.cpu_count > 0 and limits.memory_mb >= 16 and limits.disk_mb >= 16 and limits.pids >= 16):
        raise errors.InvalidRequestError(
            f"limits out of range (cpu_count > 0, memory_mb >= 16, disk_mb >= 16, pids >= 16): {limits}"
        )


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    if os.WIFEXITED(status):
        return f"exit code {os.WEXITSTATUS(status)}"
    return f"status {status}"


def _open_files() -> set[str]:
    """Paths that some process on the host has open."""
    paths = set()
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            fds = list(fd_dir.iterdir())
        except OSError:
            continue
        for fd in fds:
            with contextlib.suppress(OSError):
                paths.add(os.readlink(fd))
    return paths


def _pid_alive(pid: str) -> bool:
    return pid.isdigit() and Path(f"/proc/{pid}").exists()


def _iterdir(path: Path) -> list[Path]:
    try:
        return list(path.iterdir())
    except FileNotFoundError:
        return []
