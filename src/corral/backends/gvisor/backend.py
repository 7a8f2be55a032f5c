"""The gVisor backend: runsc (ptrace platform) runs the agent on an OCI bundle of the template.

The sandbox's system calls are served by gVisor's user-space kernel (the sentry), not the
host's; its file operations go through runsc's gofer. Everything around runsc is the namespace
backend's: the overlay root over a size-limited tmpfs, the cgroups, the netns with its veth and
nftables chain, DNS filter and egress proxy. Per sandbox, on the host::

    <run>/<id>/            root-owned, 0710 (group 100000: the gofer may traverse it)
        state.json         what reap_orphans needs when no record owns the sandbox
        bundle/            config.json (spec.py), runsc.pid
        resolv.conf hosts  bound read-only into the sandbox
        disk/              tmpfs (size = disk quota): upper/ work/ run/ (agent.log), log/ (runsc's)
        root/              overlay: the sandbox's /
    <run>.runsc/           runsc's state (--root), one file per container; proc/ (an empty mount point)
    /run/netns/corral-<id>, veth crl<hash>, cgroup(s) corral/<id>

The agent listens on ``tcp:<sandbox address>:49982`` and accepts only the host's end of the veth.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from ... import errors
from ...agent import AGENT_TCP_PORT
from ..base import Limits, Probe, SandboxHandle, SandboxSpec
from ..namespace import bwrap, cgroups, network, overlay
from ..namespace.backend import (
    CA_BUNDLE_INSIDE,
    ID_RE,
    NamespaceBackend,
    _check_limits,
    _iterdir,
    _limits_dict,
    proc_start_time,
)
from ..namespace.userns import HOST_UID_BASE
from . import compat, runsc, spec

log = logging.getLogger("corral.backends.gvisor")

READY_TIMEOUT = 15.0
RUNSC_ROOT_SUFFIX = ".runsc"  # <run>.runsc, beside the run dir (which holds sandbox dirs only)
SHIM = "gvisor-compat.so"  # <run>/gvisor-compat.so, copied from the data dir's build


class GVisorBackend(NamespaceBackend):
    name = "gvisor"

    def __init__(self, run_dir: Path = Path("/run/corral-gvisor"), **kwargs: Any) -> None:
        super().__init__(run_dir=run_dir, **kwargs)
        self.runsc_root = self.run_dir.with_name(self.run_dir.name + RUNSC_ROOT_SUFFIX)
        self._shim: Path | None = None
        self._preload: Path | None = None
        self._bundle: tuple[float, Path] | None = None  # (agent mtime, compiled agent file)

    # ---- setup ---------------------------------------------------------------------------

    def probe(self) -> Probe:
        if os.geteuid() != 0:
            return Probe(False, "the gvisor backend needs root (runsc, cgroups, network namespaces)")
        if runsc.binary() is None:
            return Probe(False, "runsc not found (install the Debian package runsc)")
        for tool in ("nft", "ip"):
            if shutil.which(tool, path=runsc.EXEC_PATH) is None:
                return Probe(False, f"{tool} not found (install nftables, iproute2)")
        if cgroups.detect_version() is None:
            return Probe(False, "no usable cgroup v2 (memory, cpu, pids) or v1 (memory, cpu, pids, freezer)")
        # A real sandbox: runsc must be able to trace (ptrace platform) and boot its kernel here.
        root = Path(f"/run/corral-gvisor-probe-{os.getpid()}")
        try:
            argv = [*runsc.base_argv(root), "--network=none", "do", "--root=/", "true"]
            r = runsc.run_command(argv, 30)
        except Exception as e:
            return Probe(False, f"runsc cannot run a sandbox here: {e}")
        finally:
            shutil.rmtree(root, ignore_errors=True)
        if r.returncode != 0:
            err = (r.stderr or b"").decode(errors="replace").strip().splitlines()
            return Probe(
                False,
                f"runsc cannot run a sandbox here ({runsc.PLATFORM} platform): {err[-1] if err else r.returncode}",
            )
        return Probe(True)

    async def _ensure_ready(self) -> None:
        if self._ready:
            return
        async with self._init_lock:
            if self._ready:
                return
            version = cgroups.detect_version()
            if version is None:
                raise errors.UnavailableError("no usable cgroup hierarchy")
            if runsc.binary() is None:
                raise errors.UnavailableError("gvisor backend: runsc is not installed")
            self._cg_version = version
            try:
                self.run_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
                overlay.ensure_run_tmpfs(self.run_dir)
                await network.init_firewall(self.subnet)
                if self.ca_bundle is not None:
                    self._sandbox_bundle = await asyncio.to_thread(self._write_sandbox_bundle, self.ca_bundle)
                await asyncio.to_thread(self._install_shim)
            except Exception as e:
                raise errors.UnavailableError(f"gvisor backend cannot start sandboxes here: {e}") from e
            self._ready = True

    def _install_shim(self) -> None:
        built = compat.build(self.data_dir / "gvisor")
        if built is None:
            return
        target = self.run_dir / SHIM
        tmp = target.with_suffix(".tmp")
        shutil.copyfile(built, tmp)
        tmp.chmod(0o644)
        os.replace(tmp, target)
        self._shim = target
        self._preload = compat.preload_file(self.run_dir, spec.SHIM_INSIDE)

    def _cgroup_limits(self, limits: Limits) -> Limits:
        # runsc's own threads and its ptrace stubs count in the host pids cgroup.
        return dataclasses.replace(limits, pids=limits.pids + spec.PIDS_OVERHEAD)

    def _agent_bundle(self) -> Path | None:
        """The agent compiled on the host, as a file in the run dir bound into sandboxes."""
        try:
            mtime = bwrap.agent_mtime(self.agent_path)
            if self._bundle is None or self._bundle[0] != mtime or not self._bundle[1].exists():
                code = self._compiled_agent()
                if not code:
                    return None
                path = self.run_dir / "agent.bundle"
                tmp = path.with_suffix(".tmp")
                tmp.write_bytes(code)
                tmp.chmod(0o644)
                os.replace(tmp, path)
                self._bundle = (mtime, path)
            return self._bundle[1]
        except OSError as e:
            log.warning("cannot write the compiled agent (sandboxes compile it): %s", e)
            return None

    # ---- start ---------------------------------------------------------------------------

    async def start(self, spec_: SandboxSpec) -> SandboxHandle:
        sid = spec_.sandbox_id
        if not ID_RE.match(sid):
            raise errors.InvalidRequestError(f"invalid sandbox id {sid!r}")
        _check_limits(spec_.limits)
        for lower in spec_.lower_dirs():
            if not Path(lower).is_dir():
                raise errors.TemplateNotFoundError(f"template dir {lower} not found")
        await self._ensure_ready()
        sdir = self.run_dir / sid
        # SECURITY: runsc's state (its control of every sandbox) is root's alone. Made on first
        # use: a server that runs no gVisor sandbox leaves nothing of runsc's behind.
        self.runsc_root.mkdir(mode=0o700, exist_ok=True)
        try:
            sdir.mkdir(mode=0o700)
        except FileExistsError:
            raise errors.ConflictError(f"sandbox {sid!r} already exists on this host") from None
        handle = SandboxHandle(sid, "", {"backend": self.name, "dir": str(sdir)})
        try:
            # SECURITY: root's dir; group 100000 (the gofer's root) may only traverse it.
            os.chown(sdir, 0, HOST_UID_BASE)
            os.chmod(sdir, 0o710)
            addr = self.pool.allocate(owner=str(sdir))
            handle.agent_socket = f"tcp:{addr.sandbox}:{AGENT_TCP_PORT}"
            handle.state.update({
                "root": str(sdir / "root"),
                "disk": str(sdir / "disk"),
                "agent_dir": str(sdir / "disk" / "run"),
                "template": str(spec_.template_dir),
                "layers": [str(p) for p in spec_.layers],
                "netns": network.netns_name(sid),
                "veth": network.veth_name(sid),
                "ip_index": addr.index,
                "ip": addr.sandbox,
                "host_ip": addr.host,
                "cgroup_version": self._cg_version,
                "internet": spec_.internet,
                "limits": _limits_dict(spec_.limits),
                "runsc_root": str(self.runsc_root),
            })  # fmt: skip
            self._save_state(handle)
            return await self._start(spec_, handle, addr)
        except BaseException as e:
            reason = str(e) if isinstance(e, errors.SandboxFailedError) else f"{type(e).__name__}: {e}"
            with contextlib.suppress(Exception):
                await asyncio.shield(self.cleanup(handle))
            if isinstance(e, errors.CorralError) or not isinstance(e, Exception):
                raise
            raise errors.SandboxFailedError(f"sandbox {sid} failed to start: {reason}") from e

    async def _start(
        self, spec_: SandboxSpec, handle: SandboxHandle, addr: network.Addresses
    ) -> SandboxHandle:
        sid, st = spec_.sandbox_id, handle.state
        sdir = Path(st["dir"])
        t0 = time.perf_counter()
        cg = cgroups.SandboxCgroup(self._cg_version or 1, sid)
        # SECURITY: made and limited before runsc starts, and runsc is started in it.
        cg.create()
        cg.set_limits(self._cgroup_limits(spec_.limits))
        bundle, log_dir = sdir / "bundle", sdir / "disk" / runsc.LOG_DIR
        launcher = runsc.Launcher(self.runsc_root, bundle, sid, log_dir, cg.procs_files())
        try:
            spawn = asyncio.ensure_future(launcher.spawn())
            net = asyncio.ensure_future(network.create(sid, addr))
            fw = asyncio.ensure_future(network.set_internet(st["veth"], spec_.internet))
            try:
                overlay.mount_rootfs(
                    [Path(p) for p in spec_.lower_dirs()],
                    sdir / "disk",
                    sdir / "root",
                    spec_.limits.disk_mb,
                    upper_dir=spec_.upper_dir,
                )
                log_dir.mkdir(mode=0o700)
                (sdir / "resolv.conf").write_text(network.resolv_conf())
                (sdir / "hosts").write_text(network.hosts_file(sid))
                cfg = spec.BundleConfig(
                    sandbox_id=sid, root=sdir / "root", netns=network.netns_path(sid), agent_dir=sdir / "disk" / "run",
                    agent_path=self.agent_path, address=addr.sandbox, host_address=addr.host, port=AGENT_TCP_PORT,
                    resolv_conf=sdir / "resolv.conf", hosts=sdir / "hosts", limits=spec_.limits,
                    cgroup_version=self._cg_version or 1, agent_bundle=self._agent_bundle(),
                    ca_bundle=self._sandbox_bundle if (Path(spec_.template_dir) / CA_BUNDLE_INSIDE).is_file() else None,
                    shim=self._shim, preload=self._preload,
                )  # fmt: skip
                bundle.mkdir(mode=0o700)
                (bundle / "config.json").write_text(json.dumps(spec.config(cfg)))
                self._save_state(handle)
            finally:
                results = await asyncio.gather(spawn, net, fw, return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException):
                    raise r
            t1 = time.perf_counter()
            try:
                pid = await launcher.run()
            except runsc.RunscError as e:
                raise errors.SandboxFailedError(f"sandbox {sid} failed to start: {e}") from None
            st["pid"], st["start_time"] = pid, proc_start_time(pid)
            self._save_state(handle)
            t2 = time.perf_counter()
            await self._wait_agent(handle, launcher)
            t3 = time.perf_counter()
        finally:
            launcher.close_ready()
            await asyncio.to_thread(launcher.abort)
        st["timings_ms"] = {
            "prepare": round((t1 - t0) * 1000, 2),
            "runsc": round((t2 - t1) * 1000, 2),
            "agent_ready": round((t3 - t2) * 1000, 2),
        }
        return handle

    async def _wait_agent(self, handle: SandboxHandle, launcher: runsc.Launcher | None = None) -> None:
        """Return once the agent accepts connections; fail early if runsc's sandbox is gone.

        The agent says "ready" on the container's stdout (the launcher's pipe) once it listens
        (its address is gVisor's then: a connection cannot be lost to a SYN the netstack missed).
        That is enough: a ping as well costs a round trip, and its connection makes the agent
        import what exec needs (``server.preload``) just as the first exec comes in, which then
        waits for it (~20 ms here). Without that line (the sandbox's stdout closed, or a timeout)
        the port is polled and the agent pinged, which also tells a dead sandbox from a slow one."""
        from ...agent.client import AgentClient

        st = handle.state
        host, port = st["ip"], AGENT_TCP_PORT
        deadline = time.monotonic() + READY_TIMEOUT
        delay = 0.001
        ready = False
        while launcher is not None and time.monotonic() < deadline:
            # The sentry's gofer may hold the pipe a moment after the sentry died: check it too.
            got = await launcher.wait_ready(0.25)
            if got is not None:
                ready = got
                break
            if not await self.is_alive(handle):
                break
        if ready:
            return
        while True:
            try:
                # A short connect timeout: a SYN sent before gVisor's network stack took over the
                # address is lost, and TCP would resend it only after a second.
                _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 0.05)
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
                break
            except (OSError, TimeoutError):
                pass
            if not await self.is_alive(handle):
                raise errors.SandboxFailedError(
                    f"sandbox {handle.sandbox_id} failed to start: the sandbox exited before its agent was ready; "
                    f"{self._failure_log(handle)}"
                )
            if time.monotonic() > deadline:
                raise errors.SandboxFailedError(
                    f"sandbox {handle.sandbox_id} failed to start: timed out waiting for the agent; "
                    f"{self._failure_log(handle)}"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.005)  # a refused connection costs a SYN and a RST on the veth
        try:
            await AgentClient(
                handle.agent_socket, connect_timeout=max(1.0, deadline - time.monotonic())
            ).ping()
        except errors.CorralError as e:
            raise errors.SandboxFailedError(
                f"sandbox {handle.sandbox_id} failed to start: the agent does not answer: {e}; {self._failure_log(handle)}"
            ) from None

    def _failure_log(self, handle: SandboxHandle) -> str:
        disk = Path(handle.state["disk"])
        parts = []
        why = runsc.failure_reason(disk / runsc.LOG_DIR)
        if why:
            parts.append(f"runsc: {why}")
        # The agent's stderr before its log took over, then its log (a file the sandbox may have
        # replaced: read_tail never follows a symlink).
        for name, directory, fname in (
            ("console", disk / runsc.LOG_DIR, "console.log"),
            ("agent", disk / "run", "agent.log"),
        ):
            text = overlay.read_tail(directory, fname, 1500).strip()
            if text:
                parts.append(f"{name}: {text}")
        return " | ".join(parts) or "no log output"

    # ---- running sandboxes ---------------------------------------------------------------

    async def exit_reason(self, handle: SandboxHandle) -> str | None:
        st = handle.state
        version = int(st.get("cgroup_version") or self._cg_version or 1)
        limits = st.get("limits") or {}
        if _cgroup_event(version, handle.sandbox_id, "memory", "oom_kill"):
            return (
                f"the gVisor sandbox ran out of memory (its limit: {limits.get('memory_mb')} MiB plus its "
                f"{limits.get('disk_mb')} MiB disk) and the host killed it"
            )
        why = runsc.failure_reason(Path(st["disk"]) / runsc.LOG_DIR) if st.get("disk") else ""
        if _cgroup_event(version, handle.sandbox_id, "pids", "max"):
            return f"the gVisor sandbox hit its pids limit ({limits.get('pids')}) and runsc died: {why or 'no log'}"
        if why:
            return f"the gVisor sandbox (runsc) died: {why}"
        return None

    async def stop(self, handle: SandboxHandle) -> None:
        await super().stop(handle)
        if handle.state.get("ip"):
            # A dead gVisor kernel sends no TCP reset: abort the host's connections to its agent
            # so that the streams waiting on them end now.
            await network.run(["ss", "-K", "dst", str(handle.state["ip"])], check=False)

    async def cleanup(self, handle: SandboxHandle) -> None:
        sid, st = handle.sandbox_id, handle.state
        root = Path(st.get("runsc_root") or self.runsc_root)
        failures: list[str] = []
        try:
            await self.stop(handle)
        except Exception as e:
            failures.append(f"stop: {e}")
        # SECURITY: the sentry and the gofer are in the sandbox's cgroup, so stop killed them;
        # whatever runsc process is left for it (one killed from outside leaves its gofer a
        # moment) goes now: the gofer holds the root mount.
        if not await _kill_runsc(Path(st.get("dir") or self.run_dir / sid)):
            failures.append("runsc processes survived SIGKILL")
        else:
            runsc.forget(root, sid)
        for d in _runsc_cgroups(sid):
            with contextlib.suppress(OSError):
                d.rmdir()
        try:
            await super().cleanup(handle)
        except errors.CorralError as e:
            failures.append(str(e))
        if failures:
            raise errors.CorralError(f"cleanup of sandbox {sid} incomplete: {'; '.join(failures)}")

    def handle_from_state(self, sandbox_id: str, state: dict[str, Any]) -> SandboxHandle:
        handle = super().handle_from_state(sandbox_id, state)
        if handle.state.get("ip"):
            handle.agent_socket = f"tcp:{handle.state['ip']}:{AGENT_TCP_PORT}"
        return handle

    async def reap_orphans(self, keep: set[str]) -> list[str]:
        await self._ensure_ready()
        ids = {p.name for p in _iterdir(self.run_dir) if p.is_dir() and not p.is_symlink()}  # the run dir is shared
        ids |= runsc.list_ids(self.runsc_root)
        await network.remove_stale_policies()
        return await self._reap_sandboxes(ids, keep)  # only the sandboxes whose state names gvisor

    async def close(self) -> None:
        """Running sandboxes keep running (a new server reattaches); what none uses goes."""
        if not runsc.list_ids(self.runsc_root):
            for d in (self.runsc_root / "proc", self.runsc_root):
                with contextlib.suppress(OSError):
                    d.rmdir()
        with contextlib.suppress(OSError):
            if not [p for p in _iterdir(self.run_dir) if p.is_dir()]:
                for name in (SHIM, "ld.so.preload", "agent.bundle"):
                    (self.run_dir / name).unlink(missing_ok=True)
        self._bundle = None
        await super().close()
        for ctrl in _iterdir(cgroups.CGROUP_ROOT):  # the parents runsc made in other controllers
            with contextlib.suppress(OSError):
                (ctrl / cgroups.GROUP).rmdir()


def _cgroup_event(version: int, sid: str, controller: str, key: str) -> int:
    """A counter of the sandbox's cgroup events: memory "oom_kill" (the kernel's OOM killer
    killed in it), pids "max" (a fork was refused at its limit)."""
    if version == 2:
        path = cgroups.cgroup_dirs(2, sid)[0] / f"{controller}.events"
    else:
        name = "memory.oom_control" if controller == "memory" else f"{controller}.events"
        path = cgroups.CGROUP_ROOT / controller / cgroups.GROUP / sid / name
    try:
        text = path.read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        k, _, value = line.partition(" ")
        if k == key and value.strip().isdigit():
            return int(value)
    return 0


def _runsc_cgroups(sid: str) -> list[Path]:
    """The sandbox's cgroup dirs in every v1 controller (runsc makes those we do not)."""
    found = []
    for ctrl in _iterdir(cgroups.CGROUP_ROOT):
        d = ctrl / cgroups.GROUP / sid
        if ctrl.is_dir() and not ctrl.is_symlink() and d.is_dir():
            found.append(d)
    return found


async def _kill_runsc(sdir: Path) -> bool:
    """SIGKILL runsc processes left for this sandbox (their command lines name its bundle): a
    gofer outlives a sentry killed from outside until it notices, and holds the root mount."""
    target = str(sdir / "bundle")
    pids = []
    for p in _iterdir(Path("/proc")):
        if not p.name.isdigit():
            continue
        try:
            cmdline = (p / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            cmdline
            and os.path.basename(cmdline[0]) == b"runsc"
            and any(target.encode() in a for a in cmdline)
        ):
            pids.append(int(p.name))
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
    deadline = time.monotonic() + 5
    while pids and time.monotonic() < deadline:
        pids = [pid for pid in pids if proc_start_time(pid) is not None]
        if pids:
            await asyncio.sleep(0.005)
    return not pids
