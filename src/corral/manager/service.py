"""The manager: the one service that owns sandbox lifecycle.

Every public operation is a method here (a typed action). The HTTP layer parses and renders;
the manager decides (validation against limits, state transitions, timeouts, the warm pool);
the backend does (namespaces, mounts, cgroups). Commands and files go to the sandbox's agent.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hmac
import json
import logging
import secrets
import string
import time
from dataclasses import dataclass, field
from typing import Any

from .. import errors
from ..agent.client import AgentClient
from ..backends import Backend, Limits, SandboxHandle, SandboxSpec, SecretRule
from ..schema import CreateSandbox, UpdateNetwork
from ..settings import Settings
from ..store import SandboxRecord, Store
from ..templates.store import Resolved, TemplateStore, split_ref
from . import metrics
from .backends import ISOLATION_LABEL, BackendInfo, BackendSet
from .builds import Builds
from .inside import InsideSandbox, sandbox_path, started
from .pool import Pool
from .readiness import start_and_wait_ready
from .secrets import Secret, SecretStore
from .states import LIVE, State, check_transition

log = logging.getLogger("corral.manager")

_ID_CHARS = string.ascii_lowercase + string.digits


def new_sandbox_id() -> str:
    return "".join(secrets.choice(_ID_CHARS) for _ in range(20))


@dataclass
class Live:
    """A sandbox this server runs: its record, backend handle and agent client."""

    record: SandboxRecord
    handle: SandboxHandle
    agent: AgentClient
    backend: Backend
    timer: asyncio.TimerHandle | None = None
    watcher: asyncio.Task[None] | None = None
    ending: bool = False
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    workdir: str | None = None  # the template's WORKDIR: where commands start unless told
    cpu_sample: tuple[float, float] | None = None  # (time, CPU seconds) at the last usage() call


class Manager(InsideSandbox):
    def __init__(self, settings: Settings, backends: BackendSet, store: Store) -> None:
        self.settings = settings
        self.backends = backends
        self.store = store
        self.secrets = SecretStore(settings.data_dir / "secrets.json")
        self.live: dict[str, Live] = {}
        self.pool = Pool(self, settings.pool_size)
        self.builds = Builds(self)
        self.templates: TemplateStore = self.builds.store
        self._background: set[asyncio.Task[Any]] = set()
        self._closing = False

    @classmethod
    def from_settings(cls, settings: Settings) -> Manager:
        """The manager with the store and the backends, the default one named by the settings."""
        backends = BackendSet(
            settings.isolation, run_dir=settings.run_dir, data_dir=settings.data_dir, subnet=settings.subnet,
            ca_bundle=settings.ca_bundle, dns_upstream=settings.dns_upstream,
            only={"microvm": {"microvm_dir": settings.microvm_dir}},
        )  # fmt: skip
        return cls(settings, backends, Store(settings.db_path))

    @property
    def backend(self) -> Backend:
        """The server's default backend (what the warm pool fills)."""
        return self.backends.get(self.backends.default_name)

    # ----------------------------------------------------------------- lifecycle of the service

    async def start(self) -> None:
        """Reattach to sandboxes that survived a restart, reap the rest, then warm the pool."""
        infos = await asyncio.to_thread(self.backends.infos)  # probes each backend once (a VM boot, maybe)
        for other in infos:
            log.info("backend %s: %s%s", other.name, "works" if other.works else "does not work",
                     f" ({other.reason})" if other.reason else "")  # fmt: skip
        info = self.backends.info(self.backends.default_name)
        log.info(
            "isolation: %s by default%s%s", info.name, " (auto)" if self.settings.isolation == "auto" else "",
            f"; {info.reason}" if info.reason else "",
        )  # fmt: skip
        keep: set[str] = set()
        for rec in self.store.list(states=[s.value for s in LIVE], limit=100000):
            try:
                backend = self.backends.get(rec.backend)
            except errors.CorralError:
                self._transition(rec, State.FAILED, f"its backend {rec.backend!r} is unknown to this server")
                continue
            handle = backend.handle_from_state(rec.id, rec.backend_state)
            alive = False
            if rec.state == State.RUNNING and await backend.is_alive(handle):
                try:
                    await AgentClient(handle.agent_socket).ping()
                    alive = True
                except errors.CorralError:
                    alive = False
            if alive:
                keep.add(rec.id)
                if not rec.url_secret:  # a record from before signed file URLs
                    rec.url_secret = secrets.token_hex(32)
                    self.store.update(rec.id, url_secret=rec.url_secret)
                lv = self._adopt(rec, handle, backend)
                with contextlib.suppress(errors.CorralError):  # a template deleted meanwhile: no default cwd
                    lv.workdir = self.templates.resolve(rec.template).config.workdir
                policy, names = handle.state.get("policy"), handle.state.get("secrets")
                # Rules by name and secrets need this server's DNS resolver and proxy: applied again.
                with contextlib.suppress(errors.CorralError, OSError, RuntimeError):
                    if policy:
                        await backend.set_network(handle, rec.internet, policy["allow"], policy["deny"])
                    if names:
                        rules = [SecretRule(s.placeholder, s.value, s.hosts) for s in self.secrets.get(names)]
                        await backend.set_secrets(handle, rules)
                self.store.add_event(rec.id, "reattached")
                log.info("reattached sandbox %s", rec.id)
            else:
                await self._safe_cleanup(handle, backend)
                self._transition(
                    rec, State.FAILED, "lost while the server was down; its resources were reaped"
                )
        reaped = []
        for name in self.backends.names_to_reap():
            try:
                reaped += await self.backends.get(name).reap_orphans(keep)
            except Exception:
                log.exception("reaping the orphans of the %s backend", name)
        abandoned = await asyncio.to_thread(self.templates.remove_abandoned)
        abandoned += await asyncio.to_thread(self.templates.fail_abandoned_builds)
        if abandoned:
            log.info(
                "cleaned up after %d template builds that died: %s", len(abandoned), ", ".join(abandoned)
            )
        if reaped:
            log.info("reaped %d orphaned sandboxes: %s", len(reaped), ", ".join(reaped))
        self.pool.start()

    async def shutdown(self) -> None:
        """Kill every sandbox this server owns (SIGTERM path)."""
        self._closing = True
        await self.builds.close()
        await self.pool.close()
        await asyncio.gather(
            *(self._end(lv, State.KILLED, "server shut down") for lv in list(self.live.values())),
            return_exceptions=True,
        )
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await self.backends.close()

    # ----------------------------------------------------------------- sandbox actions

    async def create(self, req: CreateSandbox) -> SandboxRecord:
        s = self.settings
        if self._closing:
            raise errors.UnavailableError("the server is shutting down")
        timeout = req.timeout or s.default_timeout
        if timeout > s.max_timeout:
            raise errors.InvalidRequestError(f"timeout {timeout} s is over the maximum of {s.max_timeout} s")
        limits = Limits(
            cpu_count=_bounded("cpu_count", req.cpu_count or s.default_cpu_count, s.max_cpu_count),
            memory_mb=int(_bounded("memory_mb", req.memory_mb or s.default_memory_mb, s.max_memory_mb)),
            disk_mb=int(_bounded("disk_mb", req.disk_mb or s.default_disk_mb, s.max_disk_mb)),
        )
        running = sum(1 for lv in self.live.values() if not lv.ending)
        if running >= s.max_sandboxes:
            raise errors.LimitExceededError(
                f"{running} sandboxes are running, the maximum is {s.max_sandboxes}"
            )
        template = self.templates.resolve(req.template)
        backend = self.backends.choose(req.isolation or template.config.labels.get(ISOLATION_LABEL))
        granted = self.secrets.get(req.secrets) if req.secrets else []
        started = time.perf_counter()
        pooled_limits = Limits(s.default_cpu_count, s.default_memory_mb, s.default_disk_mb)
        poolable = backend is self.backend and (not backend.fixed_limits or limits == pooled_limits)
        handle = await self.pool.claim(req.template, template) if poolable else None
        if handle is None:
            sandbox_id = new_sandbox_id()
            spec = SandboxSpec(
                sandbox_id=sandbox_id, template_dir=template.template_dir, layers=template.layers, limits=limits,
                internet=req.internet,
            )  # fmt: skip
            handle = await backend.start(spec)
        else:
            sandbox_id = handle.sandbox_id
        now = time.time()
        rec = SandboxRecord(
            id=sandbox_id,
            template=req.template,
            state=State.RUNNING,
            backend=backend.name,
            created_at=now,
            end_at=now + timeout,
            cpu_count=limits.cpu_count,
            memory_mb=limits.memory_mb,
            disk_mb=limits.disk_mb,
            internet=req.internet,
            metadata=dict(req.metadata),
            envs=dict(req.envs),
            backend_state=handle.state,
            url_secret=secrets.token_hex(32),
            public_ports=req.public_ports,
        )
        lv = self._adopt(rec, handle, backend)
        lv.workdir = template.config.workdir
        try:
            await backend.configure(handle, limits, req.internet)
            if req.allow_out or req.deny_out:
                await backend.set_network(handle, req.internet, req.allow_out, req.deny_out)
            if granted:
                handle.state["secrets"] = [s.name for s in granted]
                await backend.set_secrets(
                    handle, [SecretRule(s.placeholder, s.value, s.hosts) for s in granted]
                )
            envs = {**template.config.env, **{s.name: s.placeholder for s in granted}, **req.envs}
            if envs:
                await lv.agent.configure(envs=envs, hostname=sandbox_id)
            if template.config.start_cmd:
                await start_and_wait_ready(lv.agent, template, self.settings.ready_timeout)
        except BaseException:
            self.live.pop(sandbox_id, None)
            await self._safe_cleanup(handle, backend)
            raise
        self.store.insert(rec)
        self.store.add_event(
            sandbox_id, "created", template=req.template, pooled=handle.state.get("pooled", False)
        )
        metrics.CREATED.inc()
        metrics.CREATE_SECONDS.observe(time.perf_counter() - started)
        return rec

    async def backend_infos(self) -> builtins.list[BackendInfo]:
        """Each backend: whether it works on this host and why not, which is the default."""
        return await asyncio.to_thread(self.backends.infos)

    def get(self, sandbox_id: str) -> SandboxRecord:
        lv = self.live.get(sandbox_id)
        if lv is not None:
            return lv.record
        rec = self.store.get(sandbox_id)
        if rec is None:
            raise errors.SandboxNotFoundError(f"sandbox {sandbox_id!r} does not exist")
        return rec

    def list(
        self, states: list[str] | None = None, metadata: dict[str, str] | None = None
    ) -> list[SandboxRecord]:
        for st in states or []:
            if st not in State.__members__.values():
                raise errors.InvalidRequestError(f"unknown state {st!r}; states are {', '.join(State)}")
        if not states or set(states) <= {s.value for s in LIVE}:
            records = [lv.record for lv in self.live.values() if not states or lv.record.state in states]
        else:
            records = self.store.list(states=states)
        if metadata:
            records = [r for r in records if all(r.metadata.get(k) == v for k, v in metadata.items())]
        return sorted(records, key=lambda r: r.created_at, reverse=True)

    async def set_timeout(self, sandbox_id: str, timeout: int) -> SandboxRecord:
        if timeout > self.settings.max_timeout:
            raise errors.InvalidRequestError(
                f"timeout {timeout} s is over the maximum of {self.settings.max_timeout} s"
            )
        lv = self._running(sandbox_id)
        lv.record.end_at = time.time() + timeout
        self.store.update(sandbox_id, end_at=lv.record.end_at)
        self._schedule_deadline(lv)
        self.store.add_event(sandbox_id, "timeout_set", timeout=timeout)
        return lv.record

    async def usage(self, sandbox_id: str) -> dict[str, Any]:
        """What a running sandbox uses now: CPU (percent of its quota since the previous call, or
        since it started), memory and disk in bytes."""
        lv = self._running(sandbox_id)
        u = await lv.backend.usage(lv.handle)
        now = time.time()
        since, cpu_before = lv.cpu_sample or (lv.record.created_at, 0.0)
        lv.cpu_sample = (now, u.cpu_seconds)
        # Processes that exited since take their CPU time with them: never below zero.
        pct = max(0.0, u.cpu_seconds - cpu_before) / max(now - since, 1e-3) / lv.record.cpu_count * 100
        return {
            "time": now,
            "cpu_count": lv.record.cpu_count,
            "cpu_used_pct": round(min(pct, 100.0), 2),
            "memory_used": u.memory_used,
            "memory_cache": u.memory_cache,
            "memory_limit": u.memory_limit,
            "disk_used": u.disk_used,
            "disk_total": u.disk_total,
        }

    async def kill(self, sandbox_id: str) -> None:
        lv = self.live.get(sandbox_id)
        if lv is None or lv.ending:
            self.get(sandbox_id)  # 404 for an unknown id
            raise errors.SandboxNotRunningError(f"sandbox {sandbox_id!r} is not running")
        await self._end(lv, State.KILLED, "killed by request")

    # ----------------------------------------------------------------- templates

    def list_templates(self) -> builtins.list[Resolved]:
        return self.templates.list()

    def get_template(self, ref: str) -> Resolved:
        return self.templates.resolve(ref)

    async def delete_template(self, ref: str) -> None:
        """Remove a Dockerfile-built template (refused while a sandbox runs from it)."""
        name, tag = split_ref(ref)
        users = [
            lv.record.id
            for lv in self.live.values()
            if not lv.ending and _same_template(lv.record.template, name, tag)
        ]
        if users:
            raise errors.TemplateInUseError(
                f"template {name}:{tag} is used by {len(users)} running sandbox(es): {', '.join(sorted(users)[:5])}"
            )
        await self.pool.drop(f"{name}:{tag}")
        # On the event loop (a few renames): a build of this process sees each layer kept or gone,
        # never half removed. The removal itself goes to a thread.
        _, trash = self.templates.unregister(f"{name}:{tag}", self.builds.in_use())
        if trash:
            self._spawn(asyncio.to_thread(_remove_dirs, trash))

    # ----------------------------------------------------------------- secrets

    def put_secret(self, name: str, value: str, hosts: builtins.list[str]) -> Secret:
        """Register (or replace) a secret; sandboxes created with it from now on use it."""
        return self.secrets.put(name, value, hosts)

    def list_secrets(self) -> builtins.list[Secret]:
        return self.secrets.list()

    def delete_secret(self, name: str) -> None:
        self.secrets.delete(name)

    # ----------------------------------------------------------------- network

    async def network_info(self, sandbox_id: str) -> dict[str, Any]:
        """The egress policy in force, what it refused, and the bytes in and out."""
        lv = self._running(sandbox_id)
        policy = lv.handle.state.get("policy") or {}
        stats = await lv.backend.network_stats(lv.handle)
        return {"internet": lv.record.internet, "allow_out": policy.get("allow", []),
                "deny_out": policy.get("deny", []), **stats}  # fmt: skip

    async def update_network(self, sandbox_id: str, req: UpdateNetwork) -> dict[str, Any]:
        """Change internet access and the allow/deny lists of a running sandbox, at once."""
        lv = self._running(sandbox_id)
        policy = lv.handle.state.get("policy") or {}
        internet = lv.record.internet if req.internet is None else req.internet
        allow = policy.get("allow", []) if req.allow_out is None else req.allow_out
        deny = policy.get("deny", []) if req.deny_out is None else req.deny_out
        await lv.backend.set_network(lv.handle, internet, allow, deny)
        lv.record.internet = internet
        self.store.update(sandbox_id, internet=internet, backend_state=lv.handle.state)
        self.store.add_event(sandbox_id, "network", internet=internet, allow_out=allow, deny_out=deny)
        return await self.network_info(sandbox_id)

    # ----------------------------------------------------------------- ports

    def port_target(self, sandbox_id: str, port: int, token: str | None) -> tuple[str, int]:
        """Where to reach ``port`` inside the sandbox, after checking its traffic token (when its
        ports are not public). Raises SandboxNotFoundError for a sandbox that is not running."""
        if not 1 <= port <= 65535:
            raise errors.InvalidRequestError(f"port {port} is out of range")
        lv = self.live.get(sandbox_id)
        if lv is None or lv.ending:
            raise errors.SandboxNotFoundError(f"sandbox {sandbox_id!r} is not running")
        if not lv.record.public_ports:
            expected = traffic_token(lv.record)
            # SECURITY: constant-time comparison.
            if token is None or not hmac.compare_digest(token.encode(), expected.encode()):
                raise errors.AuthenticationError(
                    f"sandbox {sandbox_id}'s ports are private: send its traffic token "
                    "(X-Corral-Traffic-Token header or traffic_token query parameter)"
                )
        return lv.backend.address(lv.handle), port

    async def listening_ports(self, sandbox_id: str) -> builtins.list[int]:
        """TCP ports something listens on inside the sandbox (from its /proc/net/tcp and tcp6)."""
        lv = self._running(sandbox_id)
        ports: set[int] = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                data = b"".join([chunk async for chunk in await started(lv.agent.read_file(table, "root"))])
            except errors.FileNotFoundError_:
                continue
            ports |= _listening(data.decode("ascii", "replace"))
        return sorted(ports)

    def sign_file_url(
        self, sandbox_id: str, path: str, user: str, operation: str, expires_in: int
    ) -> tuple[str, int, str]:
        """(absolute path, expiry as a unix time, signature) of a URL that grants ``operation``."""
        if operation not in FILE_URL_OPS:
            raise errors.InvalidRequestError(f"operation must be one of {', '.join(FILE_URL_OPS)}")
        if not 1 <= expires_in <= MAX_FILE_URL_SECONDS:
            raise errors.InvalidRequestError(
                f"expires_in must be between 1 and {MAX_FILE_URL_SECONDS} seconds"
            )
        lv = self._running(sandbox_id)
        full = sandbox_path(path, user)
        expires = int(time.time()) + expires_in
        return (
            full,
            expires,
            _file_url_signature(lv.record.url_secret, sandbox_id, operation, full, user, expires),
        )

    def check_file_url(
        self, sandbox_id: str, path: str, user: str, operation: str, expires: int, signature: str
    ) -> None:
        """Raise PermissionDeniedError unless the signed URL grants ``operation`` now; then
        SandboxNotRunningError if the sandbox stopped."""
        lv = self.live.get(sandbox_id)
        rec = lv.record if lv is not None else self.store.get(sandbox_id)
        if rec is None or not rec.url_secret:
            raise errors.PermissionDeniedError("invalid file URL signature")
        expected = _file_url_signature(rec.url_secret, sandbox_id, operation, path, user, expires)
        # SECURITY: constant-time comparison (the signature cannot be guessed byte by byte).
        if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "surrogateescape")):
            raise errors.PermissionDeniedError("invalid file URL signature")
        if expires < time.time():
            raise errors.PermissionDeniedError("this file URL has expired")
        self._running(sandbox_id)

    # ----------------------------------------------------------------- internals

    def _running(self, sandbox_id: str) -> Live:
        lv = self.live.get(sandbox_id)
        if lv is None or lv.ending:
            rec = self.get(sandbox_id)
            raise errors.SandboxNotRunningError(f"sandbox {sandbox_id!r} is {rec.state}")
        return lv

    def _adopt(self, rec: SandboxRecord, handle: SandboxHandle, backend: Backend) -> Live:
        lv = Live(record=rec, handle=handle, agent=AgentClient(handle.agent_socket), backend=backend)
        self.live[rec.id] = lv
        self._schedule_deadline(lv)
        lv.watcher = asyncio.get_running_loop().create_task(self._watch(lv))
        metrics.RUNNING.set(len(self.live))
        return lv

    def _schedule_deadline(self, lv: Live) -> None:
        if lv.timer is not None:
            lv.timer.cancel()
        loop = asyncio.get_running_loop()
        delay = max(0.0, lv.record.end_at - time.time())
        lv.timer = loop.call_later(delay, self._expire, lv)

    def _expire(self, lv: Live) -> None:
        if not lv.ending:
            self._spawn(self._end(lv, State.EXPIRED, "its timeout passed"))

    async def _watch(self, lv: Live) -> None:
        """Mark the sandbox failed if its init (and so its agent) exits while it should run."""
        try:
            await lv.backend.wait_exit(lv.handle)
        except asyncio.CancelledError:
            return
        if not lv.ending:
            log.warning("sandbox %s died on its own", lv.record.id)
            try:
                reason = await lv.backend.exit_reason(lv.handle)
            except Exception:
                log.exception("the exit reason of sandbox %s", lv.record.id)
                reason = None
            await self._end(
                lv, State.FAILED, reason or "the sandbox's agent exited (killed from inside or out of memory)"
            )

    async def _end(self, lv: Live, state: State, reason: str) -> None:
        """Stop a sandbox now, record why, and free its resources in the background."""
        if lv.ending:
            return
        lv.ending = True
        if lv.timer is not None:
            lv.timer.cancel()
        if lv.watcher is not None and lv.watcher is not asyncio.current_task():
            lv.watcher.cancel()
        try:
            await lv.backend.stop(lv.handle)
        except Exception:  # the cleanup below retries everything stop does
            log.exception("stopping sandbox %s", lv.record.id)
        self._transition(lv.record, state, reason)
        self.live.pop(lv.record.id, None)
        metrics.RUNNING.set(len(self.live))
        self._spawn(self._safe_cleanup(lv.handle, lv.backend))

    def _transition(self, rec: SandboxRecord, state: State, reason: str) -> None:
        check_transition(State(rec.state), state)
        rec.state, rec.reason, rec.ended_at = state.value, reason, time.time()
        if self.store.get(rec.id) is not None:
            self.store.update(rec.id, state=rec.state, reason=reason, ended_at=rec.ended_at)
        self.store.add_event(rec.id, state.value, reason=reason)
        metrics.ENDED.labels(state=state.value).inc()

    async def _safe_cleanup(self, handle: SandboxHandle, backend: Backend) -> None:
        try:
            await backend.cleanup(handle)
        except Exception:
            log.exception("cleaning up sandbox %s", handle.sandbox_id)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def idle(self) -> None:
        """Wait until background cleanups are done (tests and shutdown)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)


def _remove_dirs(dirs: builtins.list[Any]) -> None:
    import shutil

    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)


def _same_template(used: str, name: str, tag: str) -> bool:
    used_name, _, used_tag = used.partition(":")
    return used_name == name and (used_tag or "latest") == tag


def _bounded(name: str, value: float, maximum: float) -> float:
    if value > maximum:
        raise errors.InvalidRequestError(f"{name} {value} is over the maximum of {maximum}")
    return value


FILE_URL_OPS = ("download", "upload")
MAX_FILE_URL_SECONDS = 7 * 24 * 3600


def _file_url_signature(
    secret: str, sandbox_id: str, operation: str, path: str, user: str, expires: int
) -> str:
    """HMAC-SHA256 of the fields a signed file URL grants, JSON-encoded so none can bleed into another."""
    message = json.dumps([sandbox_id, operation, path, user, expires], separators=(",", ":"))
    return hmac.new(bytes.fromhex(secret), message.encode(), "sha256").hexdigest()


def traffic_token(rec: SandboxRecord) -> str:
    """The token a private sandbox's port URLs ask for (derived from its secret: nothing to store)."""
    return hmac.new(bytes.fromhex(rec.url_secret), b"traffic", "sha256").hexdigest()[:40]


TCP_LISTEN = "0A"


def _listening(table: str) -> set[int]:
    """Ports in LISTEN state in a /proc/net/tcp table (local address is hex ``ip:port``)."""
    ports = set()
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 3 and fields[3] == TCP_LISTEN:
            ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports
