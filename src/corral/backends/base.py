"""The one interface every isolation backend implements.

The manager decides, backends do: a backend starts a sandbox whose agent answers on a unix
socket, changes its limits, stops it and frees what it holds. Everything a restarted server
needs to find a sandbox again lives in ``SandboxHandle.state`` (plain JSON, kept by the store).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class SecretRule:
    """A secret as a sandbox's egress sees it: its placeholder becomes its value in the headers
    of requests to its allowed hosts (domain patterns)."""

    placeholder: str
    value: str
    hosts: tuple[str, ...]


@dataclass(frozen=True)
class Limits:
    cpu_count: float = 1.0
    memory_mb: int = 512
    disk_mb: int = 1024
    pids: int = 1024


@dataclass(frozen=True)
class SandboxSpec:
    sandbox_id: str
    template_dir: Path  # the template's root filesystem (read-only lower dir), owners shifted
    limits: Limits = field(default_factory=Limits)
    internet: bool = True
    # Layers stacked on template_dir, bottom to top (a Dockerfile template's steps), read-only too.
    layers: tuple[Path, ...] = ()
    # A host dir that takes the sandbox's writes instead of its tmpfs (a template build captures
    # it as a new layer). None: writes go to the size-limited tmpfs and vanish with the sandbox.
    upper_dir: Path | None = None

    def lower_dirs(self) -> tuple[Path, ...]:
        """The read-only dirs, topmost first (overlayfs's order)."""
        return (*reversed(self.layers), self.template_dir)


@dataclass
class SandboxHandle:
    sandbox_id: str
    agent_socket: Path | str  # a unix socket's host path, or "tcp:ADDRESS:PORT" (AgentClient takes both)
    state: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Usage:
    """What a sandbox uses at one moment."""

    cpu_seconds: float  # CPU time (user + system) of the processes it has now
    memory_used: int  # bytes charged to it (its writable layer's pages included)
    memory_cache: int  # of which page cache
    memory_limit: int
    disk_used: int  # bytes in its writable layer
    disk_total: int


@dataclass(frozen=True)
class Probe:
    ok: bool
    reason: str = ""  # why it does not work; or, when it works, a note (e.g. "TCG: slow")
    production: bool = True  # works well enough for ``auto`` to pick it (a TCG microVM does not)


class Backend:
    """Base class of the isolation backends (see ARCHITECTURE.md)."""

    name = "abstract"
    # Memory and disk are set when a sandbox starts (a VM's RAM and disk): a started sandbox
    # (a pooled one) serves only creates that ask for the limits it was started with.
    fixed_limits = False

    def probe(self) -> Probe:
        raise NotImplementedError

    async def start(self, spec: SandboxSpec) -> SandboxHandle:
        """Start a sandbox and return once its agent answers ping."""
        raise NotImplementedError

    async def configure(self, handle: SandboxHandle, limits: Limits, internet: bool) -> None:
        """Apply limits and the network policy to a running sandbox (used when a pooled one is claimed)."""
        raise NotImplementedError

    async def stop(self, handle: SandboxHandle) -> None:
        """Kill every process of the sandbox. Fast: the caller answers the client after this."""
        raise NotImplementedError

    async def cleanup(self, handle: SandboxHandle) -> None:
        """Free mounts, cgroups, network namespace, veths and files. Idempotent."""
        raise NotImplementedError

    async def is_alive(self, handle: SandboxHandle) -> bool:
        raise NotImplementedError

    def handle_from_state(self, sandbox_id: str, state: dict[str, Any]) -> SandboxHandle:
        raise NotImplementedError

    async def usage(self, handle: SandboxHandle) -> Usage:
        """CPU, memory and disk use of a running sandbox, read from the host (not from inside)."""
        raise NotImplementedError

    async def set_network(
        self, handle: SandboxHandle, internet: bool, allow: list[str], deny: list[str]
    ) -> None:
        """Egress: internet on or off; destinations (IPv4 addresses or CIDRs) always allowed, or refused
        (counted, with their address and port). Applied to a running sandbox at once."""
        raise NotImplementedError

    async def set_secrets(self, handle: SandboxHandle, secrets: list[SecretRule]) -> None:
        """Secrets for the sandbox's egress (``SecretRule``: placeholder, value, allowed hosts):
        its web traffic goes through a proxy that swaps placeholders for values in headers."""
        raise NotImplementedError

    async def network_stats(self, handle: SandboxHandle) -> dict[str, Any]:
        """``{"blocked": packets, "blocked_destinations": [{address, port, packets}], "bytes_out", "bytes_in"}``."""
        raise NotImplementedError

    def address(self, handle: SandboxHandle) -> str:
        """The IP address at which the host reaches servers listening inside the sandbox."""
        raise NotImplementedError

    async def wait_exit(self, handle: SandboxHandle) -> None:
        """Return when the sandbox's init process has exited (for whatever reason)."""
        raise NotImplementedError

    async def exit_reason(self, handle: SandboxHandle) -> str | None:
        """Why a sandbox whose ``wait_exit`` returned is gone, when the backend can tell
        (e.g. "runsc panicked: ..."); None: the manager's generic reason."""
        return None

    async def reap_orphans(self, keep: set[str]) -> list[str]:
        """Free the resources of every sandbox this backend finds on the host whose id is not in ``keep``."""
        raise NotImplementedError

    async def close(self) -> None:
        """Release process-wide resources (e.g. the shared user namespace fd)."""
