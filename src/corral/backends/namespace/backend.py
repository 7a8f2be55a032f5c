"""The namespace backend: bubblewrap + shared user namespace + overlayfs + cgroups + netns + seccomp.

Per sandbox, on the host::

    <run>/<id>/            root-owned, 0700
        state.json         what reap_orphans needs when no record owns the sandbox
        resolv.conf hosts  bound read-only into the sandbox
        disk/              tmpfs (size = disk quota): upper/ work/ run/ bwrap.log
        root/              overlay: the sandbox's /
        run -> disk/run    bound at /run/corral (agent socket and log)
        agent.sock         bind mount of disk/run/agent.sock (what the server connects to)
    /run/netns/corral-<id>, veth crl<hash>, cgroup(s) corral/<id>
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import stat
import time
from pathlib import Path
from typing import Any

from ... import errors
from ..base import Backend, Limits, Probe, SandboxHandle, SandboxSpec, Usage
from . import bwrap, cgroups, dns, egress, network, overlay, seccomp
from .userns import HOST_UID_BASE, SharedUserNamespace

log = logging.getLogger("corral.backends.namespace")

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
READY_TIMEOUT = 10.0
STATE_FILE = "state.json"
CA_BUNDLE_INSIDE = bwrap.CA_BUNDLE_INSIDE.lstrip("/")
SANDBOX_CA_BUNDLE = "sandbox-ca-bundle.crt"  # <run>/: the host's CA bundle plus corral's egress CA
AGENT_SOCKET = "agent.sock"  # <run>/<id>/agent.sock: a bind of the agent's socket, pinned at start


def _default_agent_path() -> Path:
    import corral.agent

    return corral.agent.AGENT_PATH


def proc_start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (None if gone or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = data[data.rindex(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and of the children it has reaped (0 if it is gone).

    Summed over a sandbox's processes, this counts every process that ever ran in it while the
    ones that reaped them (its init and agent, in the end) live; cgroup v1's cpu controller has
    no usage counter of its own."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    fields = data[data.rindex(b")") + 2 :].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime, stime, cutime, cstime


class NamespaceBackend(Backend):
    name = "namespace"

    def __init__(
        self,
        run_dir: Path = Path("/run/corral"),
        data_dir: Path = Path("/var/lib/corral"),
        agent_path: Path | None = None,
        subnet: str = "10.213.0.0/16",
        ca_bundle: str | None = None,
        dns_upstream: str | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.data_dir = Path(data_dir)
        self.agent_path = Path(agent_path) if agent_path else _default_agent_path()
        self.subnet = subnet
        self.ca_bundle = Path(ca_bundle) if ca_bundle and Path(ca_bundle).is_file() else None
        self.dns_upstream = dns_upstream
        self._resolver: tuple[dns.Resolver, int] | None = None  # started with the first rule by name
        self._proxy: tuple[egress.EgressProxy, int] | None = None  # started with the first secret
        self._secrets: dict[str, list[egress.SecretRule]] = {}  # sandbox id -> its secrets
        self._ca: egress.CertificateAuthority | None = None
        self._sandbox_bundle: Path | None = None  # the host's CA bundle plus corral's egress CA
        self.pool = network.IpPool(subnet)
        self._userns = SharedUserNamespace()
        self._seccomp: bytes = b""  # the BPF program, built once
        self._agent_code: tuple[float, bytes] | None = None  # (agent mtime, compiled bundle)
        self._cg_version: int | None = None
        self._ready = False
        self._init_lock = asyncio.Lock()
        self._children: set[int] = set()  # pids of the bwrap processes we forked (to reap)

    # ---- setup ---------------------------------------------------------------------------

    def probe(self) -> Probe:
        if os.geteuid() != 0:
            return Probe(False, "the namespace backend needs root")
        for tool in ("bwrap", "nft", "ip"):
            if (
                shutil.which(tool, path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
                is None
            ):
                return Probe(False, f"{tool} not found (install bubblewrap, nftables, iproute2)")
        if cgroups.detect_version() is None:
            return Probe(False, "no usable cgroup v2 (memory, cpu, pids) or v1 (memory, cpu, pids, freezer)")
        try:
            import seccomp as _  # noqa: F401
        except ImportError:
            return Probe(False, "python3-seccomp is not importable")
        try:
            self._userns.fd()
        except Exception as e:
            return Probe(False, f"user namespaces do not work here: {e}")
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
            self._cg_version = version
            try:
                self.run_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
                overlay.ensure_run_tmpfs(self.run_dir)
                await asyncio.to_thread(self._userns.fd)
                self._seccomp = seccomp.filter_bytes()
                await network.init_firewall(self.subnet)
                if self.ca_bundle is not None:
                    self._sandbox_bundle = await asyncio.to_thread(self._write_sandbox_bundle, self.ca_bundle)
            except Exception as e:
                raise errors.UnavailableError(f"namespace backend cannot start sandboxes here: {e}") from e
            self._ready = True

    # ---- start ---------------------------------------------------------------------------

    async def start(self, spec: SandboxSpec) -> SandboxHandle:
        sid = spec.sandbox_id
        if not ID_RE.match(sid):
            raise errors.InvalidRequestError(f"invalid sandbox id {sid!r}")
        _check_limits(spec.limits)
        for lower in spec.lower_dirs():
            if not Path(lower).is_dir():
                raise errors.TemplateNotFoundError(f"template dir {lower} not found")
        await self._ensure_ready()
        assert self._cg_version is not None
        sdir = self.run_dir / sid
        try:
            # SECURITY: root's dir; group 100000 may only traverse it (bwrap, running as that
            # uid, must reach the mounts to bind them); other host users get nothing.
            sdir.mkdir(mode=0o700)
        except FileExistsError:
            raise errors.ConflictError(f"sandbox {sid!r} already exists on this host") from None
        handle = SandboxHandle(sid, sdir / AGENT_SOCKET, {"backend": self.name, "dir": str(sdir)})
        try:
            os.chown(sdir, 0, HOST_UID_BASE)
            os.chmod(sdir, 0o710)
            addr = self.pool.allocate(owner=str(sdir))
            handle.state.update({
                "root": str(sdir / "root"),
                "disk": str(sdir / "disk"),
                "agent_dir": str(sdir / "run"),
                "template": str(spec.template_dir),
                "layers": [str(p) for p in spec.layers],
                "netns": network.netns_name(sid),
                "veth": network.veth_name(sid),
                "ip_index": addr.index,
                "ip": addr.sandbox,
                "host_ip": addr.host,
                "cgroup_version": self._cg_version,
                "internet": spec.internet,
                "limits": _limits_dict(spec.limits),
            })  # fmt: skip
            self._save_state(handle)
            return await self._start(spec, handle, addr)
        except BaseException as e:
            reason = str(e) if isinstance(e, errors.SandboxFailedError) else f"{type(e).__name__}: {e}"
            with contextlib.suppress(Exception):
                await asyncio.shield(self.cleanup(handle))
            if isinstance(e, errors.CorralError) or not isinstance(e, Exception):
                raise
            raise errors.SandboxFailedError(f"sandbox {sid} failed to start: {reason}") from e

    async def _start(
        self, spec: SandboxSpec, handle: SandboxHandle, addr: network.Addresses
    ) -> SandboxHandle:
        sid, st = spec.sandbox_id, handle.state
        sdir = Path(st["dir"])
        t0 = time.perf_counter()
        cg = cgroups.SandboxCgroup(self._cg_version or 1, sid)
        cg.create()
        cg.set_limits(self._cgroup_limits(spec.limits))
        cfg = bwrap.BwrapConfig(
            sandbox_id=sid, root=sdir / "root", agent_dir=sdir / "disk" / "run", agent_path=self.agent_path,
            resolv_conf=sdir / "resolv.conf", hosts=sdir / "hosts",
            ca_bundle=self._sandbox_bundle if (Path(spec.template_dir) / CA_BUNDLE_INSIDE).is_file() else None,
        )  # fmt: skip
        userns_fd = self._userns.fd()
        code = self._compiled_agent()
        seccomp_fd = seccomp.filter_fd(self._seccomp)
        code_fd = bwrap.memfd_with("corral-agent", code) if code else -1
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        child: bwrap.GatedChild | None = None
        try:
            # The child forks now and joins its cgroups (slow: an RCU grace period) while the
            # network (ip, nft subprocesses) and the mounts are prepared; then it is let go.
            child = bwrap.GatedChild(
                bwrap.argv(cfg, userns_fd, seccomp_fd, ready_w, code_fd),
                cgroup_procs=cg.procs_files(),
                netns=network.netns_path(sid),
                pass_fds=tuple(fd for fd in (userns_fd, seccomp_fd, ready_w, code_fd) if fd >= 0),
                log_path=sdir / "disk" / "bwrap.log",
            )
            self._children.add(child.pid)
            st["pid"] = child.pid
            st["start_time"] = proc_start_time(child.pid)
            net = asyncio.ensure_future(network.create(sid, addr))
            fw = asyncio.ensure_future(network.set_internet(st["veth"], spec.internet))
            try:
                overlay.mount_rootfs(
                    [Path(p) for p in spec.lower_dirs()], sdir / "disk", sdir / "root", spec.limits.disk_mb,
                    upper_dir=spec.upper_dir,
                )
                os.symlink("disk/run", sdir / "run")
                (sdir / "resolv.conf").write_text(network.resolv_conf())
                (sdir / "hosts").write_text(network.hosts_file(sid))
                self._save_state(handle)
            finally:
                results = await asyncio.gather(net, fw, return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException):
                    raise r
            t1 = time.perf_counter()
            child.go()
            for fd in (seccomp_fd, ready_w, code_fd):
                if fd >= 0:
                    os.close(fd)
            seccomp_fd = ready_w = code_fd = -1
            try:
                await child.wait_exec()
            except bwrap.SpawnError as e:
                raise errors.SandboxFailedError(f"sandbox {sid} failed to start: {e}") from None
            t2 = time.perf_counter()
            line = await bwrap.read_fd(ready_r, until=b"\n", timeout=READY_TIMEOUT)
        finally:
            if child is not None:
                child.close()
            for fd in (seccomp_fd, ready_r, ready_w, code_fd):
                if fd >= 0:
                    os.close(fd)
        if line != b"ready\n":
            why = (
                "timed out waiting for the agent" if line is None else "the agent exited before it was ready"
            )
            raise errors.SandboxFailedError(
                f"sandbox {sid} failed to start: {why}; {self._failure_log(handle)}"
            )
        try:
            # SECURITY: the sandbox's root can swap /run/corral/agent.sock for a symlink at any
            # time; the server connects to this root-owned bind of the socket inode instead, so
            # it can never be pointed at a host socket.
            overlay.pin_file(sdir / "disk" / "run", "agent.sock", sdir / AGENT_SOCKET, stat.S_IFSOCK)
        except OSError as e:
            raise errors.SandboxFailedError(f"sandbox {sid} failed to start: agent socket: {e}") from None
        t3 = time.perf_counter()
        st["timings_ms"] = {
            "prepare": round((t1 - t0) * 1000, 2),
            "spawn": round((t2 - t1) * 1000, 2),
            "agent_ready": round((t3 - t2) * 1000, 2),
        }
        return handle

    def _cgroup_limits(self, limits: Limits) -> Limits:
        """The limits written to the sandbox's cgroup (a subclass may add its runtime's overhead)."""
        return limits

    def _compiled_agent(self) -> bytes:
        """The agent's code compiled on the host (cached while its sources are unchanged)."""
        try:
            mtime = bwrap.agent_mtime(self.agent_path)
            if self._agent_code is None or self._agent_code[0] != mtime:
                self._agent_code = (mtime, bwrap.compile_agent(self.agent_path))
            return self._agent_code[1]
        except (OSError, SyntaxError, ValueError) as e:
            log.warning("cannot precompile %s (the sandbox compiles it): %s", self.agent_path, e)
            return b""

    def _failure_log(self, handle: SandboxHandle) -> str:
        disk = Path(handle.state["disk"])
        parts = []
        for name, directory, fname in (("bwrap", disk, "bwrap.log"), ("agent", disk / "run", "agent.log")):
            text = overlay.read_tail(directory, fname, 1500).strip()
            if text:
                parts.append(f"{name}: {text}")
        return " | ".join(parts) or "no log output"

    def _save_state(self, handle: SandboxHandle) -> None:
        path = Path(handle.state["dir"]) / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(handle.state))
        os.replace(tmp, path)

    # ---- running sandboxes ---------------------------------------------------------------

    def address(self, handle: SandboxHandle) -> str:
        return str(handle.state["ip"])  # the sandbox end of its veth pair

    async def configure(self, handle: SandboxHandle, limits: Limits, internet: bool) -> None:
        _check_limits(limits)
        st = handle.state
        # Only what changed is applied: a pooled sandbox claimed with the defaults costs nothing here.
        if st.get("limits") != _limits_dict(limits):
            cg = cgroups.SandboxCgroup(int(st["cgroup_version"]), handle.sandbox_id)
            try:
                cg.set_limits(self._cgroup_limits(limits))
            except OSError as e:  # e.g. EBUSY: memory below what the sandbox already uses
                raise errors.InvalidRequestError(f"cannot apply limits {limits}: {e}") from None
        if (st.get("limits") or {}).get("disk_mb") != limits.disk_mb:
            try:
                overlay.resize_disk(Path(st["disk"]), limits.disk_mb)
            except OSError as e:  # EINVAL: smaller than what is already written
                raise errors.InvalidRequestError(f"cannot resize the disk to {limits.disk_mb} MiB: {e}") from None
        if st.get("internet") is not internet:
            await network.set_internet(st["veth"], internet)
        st["limits"], st["internet"] = _limits_dict(limits), internet
        with contextlib.suppress(OSError):
            self._save_state(handle)

    async def usage(self, handle: SandboxHandle) -> Usage:
        st = handle.state
        cg = cgroups.SandboxCgroup(int(st["cgroup_version"]), handle.sandbox_id)
        try:
            used, cache, limit = cg.memory()
            vfs = os.statvfs(st["disk"])
        except (OSError, ValueError) as e:
            raise errors.UnavailableError(f"cannot read the usage of sandbox {handle.sandbox_id}: {e}") from None
        cpu = sum(proc_cpu_seconds(pid) for pid in cg.pids())
        return Usage(
            cpu_seconds=cpu, memory_used=used, memory_cache=cache, memory_limit=limit,
            disk_used=(vfs.f_blocks - vfs.f_bfree) * vfs.f_frsize, disk_total=vfs.f_blocks * vfs.f_frsize,
        )

    async def set_network(self, handle: SandboxHandle, internet: bool, allow: list[str], deny: list[str]) -> None:
        st = handle.state
        st["internet"] = internet
        st["policy"] = {"allow": allow, "deny": deny} if allow or deny else None
        await self._apply_network(handle)
        with contextlib.suppress(OSError):
            self._save_state(handle)

    async def set_secrets(self, handle: SandboxHandle, secrets: list[egress.SecretRule]) -> None:
        # Kept in memory only (the values never go to disk here); the manager applies them again
        # to the sandboxes it reattaches after a restart.
        if secrets:
            self._secrets[handle.sandbox_id] = list(secrets)
        else:
            self._secrets.pop(handle.sandbox_id, None)
        await self._apply_network(handle)

    async def _apply_network(self, handle: SandboxHandle) -> None:
        """The sandbox's chain, DNS filter and egress proxy, from its rules and secrets."""
        st = handle.state
        internet = bool(st.get("internet", True))
        policy_state = st.get("policy") or {}
        allow, deny = list(policy_state.get("allow", [])), list(policy_state.get("deny", []))
        secrets = self._secrets.get(handle.sandbox_id, [])
        policy = bool(allow or deny or secrets)
        names = ([p for p in allow if not _is_cidr(p)], [p for p in deny if not _is_cidr(p)])
        cidrs = ([p for p in allow if _is_cidr(p)], [p for p in deny if _is_cidr(p)])
        dns_port = proxy_port = None
        if names[0] or names[1]:
            resolver, dns_port = await self._dns()
            resolver.rules[st["ip"]] = dns.DomainRules(st["veth"], *names, internet)
        elif self._resolver is not None:
            self._resolver[0].rules.pop(st["ip"], None)
        if secrets:
            proxy, proxy_port = await self._egress()
            previous = proxy.sandboxes.get(st["ip"])
            proxy.sandboxes[st["ip"]] = egress.SandboxEgress(
                secrets, internet, *cidrs, resolved=previous.resolved if previous else set()
            )
        elif self._proxy is not None:
            self._proxy[0].sandboxes.pop(st["ip"], None)
        had_chain = bool(st.get("egress_chain") or st.get("policy"))
        st["egress_chain"] = policy  # what cleanup must remove
        if policy:
            await network.set_policy(st["veth"], *cidrs, internet, dns_port, proxy_port)
        # With rules, the sandbox's own chain decides (see network.set_policy).
        await network.set_internet(st["veth"], internet or policy)
        if had_chain and not policy:
            await network.remove_policy(st["veth"])

    def _write_sandbox_bundle(self, host_bundle: Path) -> Path:
        """What sandboxes trust: the host's CA certificates and the egress proxy's CA."""
        ca = self._authority()
        # In the run dir: bwrap (host uid 100000) must read it, and the data dir may be closed to it.
        path = self.run_dir / SANDBOX_CA_BUNDLE
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(host_bundle.read_bytes().rstrip(b"\n") + b"\n" + ca.pem())
        tmp.chmod(0o644)
        tmp.rename(path)
        return path

    async def _dns(self) -> tuple[dns.Resolver, int]:
        if self._resolver is None:
            upstream = self.dns_upstream or next(iter(network.host_nameservers()), "127.0.0.53")
            host, _, port = upstream.partition(":")
            self._resolver = await dns.start((host, int(port or 53)), self._resolved)
        return self._resolver

    def _authority(self) -> egress.CertificateAuthority:
        """corral's egress CA (loaded, or made, once)."""
        if self._ca is None:
            self._ca = egress.CertificateAuthority(self.data_dir / "egress")
        return self._ca

    async def _resolved(self, address: str, veth: str, addresses: list[tuple[str, int]]) -> None:
        """An allowed name resolved for the sandbox at ``address``: what it resolved to opens in
        the firewall and in the egress proxy."""
        await network.allow_addresses(veth, addresses)
        rules = self._proxy[0].sandboxes.get(address) if self._proxy else None
        if rules is not None:
            rules.resolved.update(ip for ip, _ in addresses)

    async def _egress(self) -> tuple[egress.EgressProxy, int]:
        if self._proxy is None:
            refuse = ["127.0.0.0/8", "169.254.0.0/16", "0.0.0.0/8", self.subnet, *network.host_addresses()]
            proxy = egress.EgressProxy(self._authority(), str(self.ca_bundle) if self.ca_bundle else None, refuse)
            self._proxy = (proxy, await proxy.start())
        return self._proxy

    async def network_stats(self, handle: SandboxHandle) -> dict[str, Any]:
        veth = handle.state["veth"]
        blocked, destinations = await network.policy_stats(veth) if handle.state.get("policy") else (0, [])
        rules = self._resolver[0].rules.get(handle.state["ip"]) if self._resolver else None
        if rules is not None:  # names refused by the resolver
            blocked += sum(rules.blocked.values())
            destinations += [{"address": name, "port": 53, "packets": n} for name, n in rules.blocked.items()]
        proxied = self._proxy[0].sandboxes.get(handle.state["ip"]) if self._proxy else None
        if proxied is not None:  # connections refused by the egress proxy
            blocked += sum(proxied.blocked.values())
            destinations += [{"address": a, "port": p, "packets": n} for (a, p), n in proxied.blocked.items()]
        out, into = network.traffic_bytes(veth)
        return {"blocked": blocked, "blocked_destinations": destinations, "bytes_out": out, "bytes_in": into}

    async def is_alive(self, handle: SandboxHandle) -> bool:
        pid, start = handle.state.get("pid"), handle.state.get("start_time")
        if not pid or start is None:
            return False
        return proc_start_time(int(pid)) == start

    async def wait_exit(self, handle: SandboxHandle) -> None:
        pid, start = handle.state.get("pid"), handle.state.get("start_time")
        if not pid:
            return
        try:
            pidfd = os.pidfd_open(int(pid))
        except ProcessLookupError:
            self._reap(int(pid))
            return
        try:
            # Checked after the pidfd is open: a pid reused later cannot be mistaken for ours.
            if proc_start_time(int(pid)) != start:
                return
            loop = asyncio.get_running_loop()
            done: asyncio.Future[None] = loop.create_future()

            def on_exit() -> None:
                if not done.done():
                    done.set_result(None)

            loop.add_reader(pidfd, on_exit)
            try:
                await done
            finally:
                loop.remove_reader(pidfd)
        finally:
            os.close(pidfd)
        self._reap(int(pid))

    def _reap(self, pid: int) -> bool:
        """Collect our exited child (no zombie left); True if it is gone (or not ours)."""
        if pid not in self._children:
            return True
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            self._children.discard(pid)
        return bool(done)

    async def stop(self, handle: SandboxHandle) -> None:
        st = handle.state
        version = int(st.get("cgroup_version") or self._cg_version or cgroups.detect_version() or 1)
        cg = cgroups.SandboxCgroup(version, handle.sandbox_id)
        if not await cg.kill_all():
            raise errors.CorralError(f"sandbox {handle.sandbox_id}: processes survived SIGKILL")
        # bwrap is in the cgroup, so it is dead by now; if it somehow is not, kill it by pid.
        pid = st.get("pid")
        if pid and await self.is_alive(handle):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        if pid:
            deadline = time.monotonic() + 5
            while not self._reap(int(pid)) and time.monotonic() < deadline:
                await asyncio.sleep(0.001)

    async def cleanup(self, handle: SandboxHandle) -> None:
        sid, st = handle.sandbox_id, handle.state
        sdir = Path(st.get("dir") or self.run_dir / sid)
        failures: list[str] = []

        async def step(what: str, coro_or_fn: Any) -> None:
            try:
                r = coro_or_fn()
                if asyncio.iscoroutine(r):
                    await r
            except Exception as e:
                failures.append(f"{what}: {e}")
                log.warning("cleanup of sandbox %s: %s failed: %s", sid, what, e)

        await step("stop", lambda: self.stop(handle))
        if st.get("ip"):
            if self._resolver is not None:
                self._resolver[0].rules.pop(st["ip"], None)
            if self._proxy is not None:
                self._proxy[0].sandboxes.pop(st["ip"], None)
        self._secrets.pop(sid, None)
        # Network teardown takes ~35 ms of ip/nft: run it while unmounting.
        veth = st.get("veth") or network.veth_name(sid)
        had_rules = bool(st.get("policy") or st.get("egress_chain"))
        net = asyncio.ensure_future(step("network", lambda: _teardown_network(sid, veth, had_rules)))
        await step("unmount", lambda: _unmount_all(sdir))
        version = int(st.get("cgroup_version") or self._cg_version or cgroups.detect_version() or 1)
        await step("cgroups", lambda: cgroups.SandboxCgroup(version, sid).remove())
        await net
        # SECURITY: never delete files through a mount that is still there.
        if overlay.mounts_under(sdir):
            failures.append("mounts remain")
        else:
            await step("files", lambda: shutil.rmtree(sdir) if sdir.exists() else None)
        idx = st.get("ip_index")
        if idx is not None and not failures:
            self.pool.free(int(idx), owner=str(sdir))
        if failures:
            raise errors.CorralError(f"cleanup of sandbox {sid} incomplete: {'; '.join(failures)}")

    def handle_from_state(self, sandbox_id: str, state: dict[str, Any]) -> SandboxHandle:
        state = dict(state)
        sdir = Path(state.get("dir") or self.run_dir / sandbox_id)
        state.setdefault("dir", str(sdir))
        if state.get("ip_index") is not None:
            self.pool.mark_used(int(state["ip_index"]), owner=str(sdir))
        return SandboxHandle(sandbox_id, sdir / AGENT_SOCKET, state)

    async def reap_orphans(self, keep: set[str]) -> list[str]:
        await self._ensure_ready()
        ids = {p.name for p in _iterdir(self.run_dir) if p.is_dir() and not p.is_symlink()}
        for m in overlay.mounts_under(self.run_dir):
            rel = m.relative_to(self.run_dir).parts
            if rel:
                ids.add(rel[0])
        ids |= _stale_foreign_ids(self.run_dir, set(ids))
        # Egress objects whose veth is gone (a crash between the two, or an older server's leak).
        await network.remove_stale_policies()
        return await self._reap_sandboxes(ids, keep)

    async def _reap_sandboxes(self, ids: set[str], keep: set[str]) -> list[str]:
        """Clean up the sandboxes ``ids`` of this backend that no record keeps; free the address
        reservations nothing owns any more. The reaped ids."""
        reaped = []
        for sid in sorted(ids - set(keep)):
            if not ID_RE.match(sid):
                continue
            state = self._load_state(sid)
            if state.get("backend", self.name) != self.name:
                continue  # another backend's sandbox in a shared run dir: that backend reaps it
            handle = self.handle_from_state(sid, state)
            try:
                await self.cleanup(handle)
            except errors.CorralError as e:
                log.warning("reaping sandbox %s: %s", sid, e)
                continue
            reaped.append(sid)
        self._free_stale_addresses(keep)
        return reaped

    def _free_stale_addresses(self, keep: set[str], grace: float = 60.0) -> None:
        """Drop address reservations whose sandbox dir is gone (a crash between the two)."""
        now = time.time()
        for idx, owner in self.pool.used().items():
            if not owner or Path(owner).exists() or Path(owner).name in keep:
                continue
            path = self.pool.dir / str(idx)
            try:
                ours = Path(owner).parent == self.run_dir
                if ours or now - path.stat().st_mtime > grace:
                    self.pool.free(idx, owner)
            except OSError:
                continue

    def _load_state(self, sid: str) -> dict[str, Any]:
        try:
            data = json.loads((self.run_dir / sid / STATE_FILE).read_text())
            if isinstance(data, dict):
                return data
        except (OSError, ValueError):
            pass
        return {"dir": str(self.run_dir / sid), "veth": network.veth_name(sid)}

    async def close(self) -> None:
        """Release the userns fd; running sandboxes keep running (a new server reattaches)."""
        self._userns.close()
        if self._resolver is not None:
            if self._resolver[0].transport is not None:
                self._resolver[0].transport.close()
            self._resolver = None
        if self._proxy is not None:
            await self._proxy[0].close()
            self._proxy = None
        self._ready = False
        with contextlib.suppress(OSError):
            # Sandboxes still running keep their bind of it; the next server writes it again.
            (self.run_dir / SANDBOX_CA_BUNDLE).unlink(missing_ok=True)
            overlay.release_run_tmpfs(self.run_dir)
            self.run_dir.rmdir()  # only if no sandbox is left
        cgroups.remove_parents()  # likewise


# ---- helpers ---------------------------------------------------------------------------------


def _check_limits(limits: Limits) -> None:
    if not (limits.cpu_count > 0 and limits.memory_mb >= 16 and limits.disk_mb >= 1 and limits.pids >= 16):
        raise errors.InvalidRequestError(
            f"limits out of range (cpu_count > 0, memory_mb >= 16, disk_mb >= 1, pids >= 16): {limits}"
        )


def _limits_dict(limits: Limits) -> dict[str, Any]:
    return {
        "cpu_count": limits.cpu_count,
        "memory_mb": limits.memory_mb,
        "disk_mb": limits.disk_mb,
        "pids": limits.pids,
    }


def _iterdir(path: Path) -> list[Path]:
    try:
        return list(path.iterdir())
    except FileNotFoundError:
        return []


async def _teardown_network(sid: str, veth: str, policy: bool) -> None:
    await asyncio.gather(
        network.set_internet(veth, False), network.destroy(sid, veth), *([network.remove_policy(veth)] if policy else [])
    )


def _unmount_all(sdir: Path) -> None:
    # SECURITY: unmount by the mount table, deepest first, never following a symlink.
    for m in overlay.mounts_under(sdir):
        overlay.umount_retry(m)


def _stale_foreign_ids(run_dir: Path, known: set[str], grace: float = 60.0) -> set[str]:
    """corral cgroups / netns with no entry in any run dir we know, empty, and older than grace.

    Another backend instance (another run dir) may be starting a sandbox right now: only what
    has sat empty for a while is taken for a leftover.
    """
    found: set[str] = set()
    now = time.time()
    candidates = (cgroups.list_sandbox_ids() | network.list_netns_ids()) - known
    for sid in candidates:
        dirs = [d for v in (1, 2) for d in cgroups.cgroup_dirs(v, sid) if d.exists()]
        paths = dirs + [p for p in [network.netns_path(sid)] if p.exists()]
        try:
            if any((d / "cgroup.procs").read_text().strip() for d in dirs):
                continue
            if all(now - p.stat().st_mtime > grace for p in paths):
                found.add(sid)
        except OSError:
            continue
    return found


def _is_cidr(entry: str) -> bool:
    """An IPv4 address or CIDR, not a domain name (the API's schema checked both)."""
    try:
        ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return False
    return True
