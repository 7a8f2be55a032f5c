"""Per-sandbox cgroups: memory, CPU and pids limits, and a reliable kill.

cgroup v2 (one hierarchy, ``/sys/fs/cgroup/corral/<id>``, killed with ``cgroup.kill``) when the
host's unified hierarchy has the memory, cpu and pids controllers; else cgroup v1
(``/sys/fs/cgroup/<controller>/corral/<id>`` for memory, cpu, pids and freezer; killed by
freezing, SIGKILLing every member and thawing until empty).
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from ..base import Limits

CGROUP_ROOT = Path("/sys/fs/cgroup")
GROUP = "corral"
V1_CONTROLLERS = ("memory", "cpu", "pids", "freezer")
V2_CONTROLLERS = ("memory", "cpu", "pids")
CPU_PERIOD_US = 100_000


def detect_version(root: Path = CGROUP_ROOT) -> int | None:
    """2 for a usable unified hierarchy, 1 for usable v1 controllers, None for neither."""
    controllers = root / "cgroup.controllers"
    if controllers.exists():
        try:
            available = set(controllers.read_text().split())
        except OSError:
            available = set()
        if set(V2_CONTROLLERS) <= available:
            return 2
    if all((root / c / "cgroup.procs").exists() for c in V1_CONTROLLERS):
        return 1
    return None


# ---- limit values (pure, unit-tested) ------------------------------------------------------


def memory_bytes(limits: Limits) -> int:
    """The memory cgroup limit: the sandbox's memory plus its disk.

    The writable layer lives on a tmpfs, whose pages are charged to the writer's memory cgroup;
    so the cgroup must hold both, or filling the disk would OOM-kill the sandbox before ENOSPC.
    """
    return (int(limits.memory_mb) + int(limits.disk_mb)) * 1024 * 1024


def cpu_quota_us(limits: Limits, period_us: int = CPU_PERIOD_US) -> int:
    """CFS quota for ``cpu_count`` CPUs (at least 1 ms per period)."""
    return max(1000, round(limits.cpu_count * period_us))


def v1_values(limits: Limits) -> dict[str, list[tuple[str, str]]]:
    """controller -> [(file, value)] in the order they must be written."""
    mem = str(memory_bytes(limits))
    return {
        "memory": [("memory.limit_in_bytes", mem), ("memory.memsw.limit_in_bytes", mem)],
        "cpu": [("cpu.cfs_period_us", str(CPU_PERIOD_US)), ("cpu.cfs_quota_us", str(cpu_quota_us(limits)))],
        "pids": [("pids.max", str(int(limits.pids)))],
    }


def v2_values(limits: Limits) -> list[tuple[str, str]]:
    return [
        ("memory.max", str(memory_bytes(limits))),
        ("memory.swap.max", "0"),
        ("cpu.max", f"{cpu_quota_us(limits)} {CPU_PERIOD_US}"),
        ("pids.max", str(int(limits.pids))),
    ]


def cgroup_dirs(version: int, sandbox_id: str, root: Path = CGROUP_ROOT) -> list[Path]:
    if version == 2:
        return [root / GROUP / sandbox_id]
    return [root / c / GROUP / sandbox_id for c in V1_CONTROLLERS]


# ---- the cgroup of one sandbox -------------------------------------------------------------


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _optional_write(path: Path, value: str) -> None:
    if path.exists():
        _write(path, value)


@dataclass
class SandboxCgroup:
    version: int
    sandbox_id: str
    root: Path = CGROUP_ROOT

    @property
    def dirs(self) -> list[Path]:
        return cgroup_dirs(self.version, self.sandbox_id, self.root)

    @property
    def kill_dir(self) -> Path:
        """The directory whose cgroup.procs lists every process of the sandbox."""
        return self.dirs[0] if self.version == 2 else self.root / "freezer" / GROUP / self.sandbox_id

    def create(self) -> None:
        if self.version == 2:
            parent = self.root / GROUP
            if not parent.is_dir():
                # SECURITY: the corral subtree gets the controllers that enforce the limits.
                _write(self.root / "cgroup.subtree_control", " ".join(f"+{c}" for c in V2_CONTROLLERS))
                parent.mkdir(exist_ok=True)
            wanted = set(V2_CONTROLLERS)
            have = set((parent / "cgroup.subtree_control").read_text().split())
            if not wanted <= have:
                _write(parent / "cgroup.subtree_control", " ".join(f"+{c}" for c in sorted(wanted - have)))
        for d in self.dirs:
            d.mkdir(parents=True, exist_ok=True)

    def set_limits(self, limits: Limits) -> None:
        # SECURITY: memory, CPU and pids limits are what keep one sandbox from starving the host.
        if self.version == 2:
            d = self.dirs[0]
            for name, value in v2_values(limits):
                if name == "memory.swap.max":
                    _optional_write(d / name, value)
                else:
                    _write(d / name, value)
            return
        values = v1_values(limits)
        for controller in ("cpu", "pids"):
            d = self.root / controller / GROUP / self.sandbox_id
            for name, value in values[controller]:
                _write(d / name, value)
        mem = self.root / "memory" / GROUP / self.sandbox_id
        (limit_name, limit), (memsw_name, memsw) = values["memory"]
        has_memsw = (mem / memsw_name).exists()
        # memsw must stay >= limit: raise memsw first when growing, the limit first when shrinking.
        try:
            _write(mem / limit_name, limit)
            if has_memsw:
                _write(mem / memsw_name, memsw)
        except OSError as e:
            if e.errno != errno.EINVAL or not has_memsw:
                raise
            _write(mem / memsw_name, memsw)
            _write(mem / limit_name, limit)

    def procs_files(self) -> list[str]:
        """The cgroup.procs files a new sandbox process must join (opened before its exec)."""
        return [str(d / "cgroup.procs") for d in self.dirs]

    def pids(self) -> list[int]:
        try:
            text = (self.kill_dir / "cgroup.procs").read_text()
        except FileNotFoundError:
            return []
        return [int(p) for p in text.split()]

    def memory(self) -> tuple[int, int, int]:
        """(bytes used, of which page cache, limit) of the sandbox's memory cgroup."""
        if self.version == 2:
            d = self.dirs[0]
            used, limit_name, cache_key = int((d / "memory.current").read_text()), "memory.max", "file"
        else:
            d = self.root / "memory" / GROUP / self.sandbox_id
            used, limit_name, cache_key = int((d / "memory.usage_in_bytes").read_text()), "memory.limit_in_bytes", "cache"
        raw = (d / limit_name).read_text().strip()
        limit = int(raw) if raw.isdigit() else 0
        stat = dict(line.split() for line in (d / "memory.stat").read_text().splitlines() if line.count(" ") == 1)
        return used, int(stat.get(cache_key, 0)), limit

    def exists(self) -> bool:
        return any(d.exists() for d in self.dirs)

    async def kill_all(self, timeout: float = 10.0) -> bool:
        """SIGKILL every process of the sandbox; True once none is left."""
        deadline = time.monotonic() + timeout
        if not self.kill_dir.exists():
            return True
        if self.version == 2:
            kill_file = self.kill_dir / "cgroup.kill"
            while self.pids():
                if kill_file.exists():
                    # SECURITY: cgroup.kill kills every member at once, forks in flight included.
                    _write(kill_file, "1")
                else:  # kernels before 5.14
                    self._kill_listed()
                if await self._wait_empty(min(deadline, time.monotonic() + 0.5)):
                    return True
                if time.monotonic() > deadline:
                    return False
            return True
        state = self.kill_dir / "freezer.state"
        while True:
            if not self.pids():
                return True
            # SECURITY: freezing first means no process can fork a new one between our listing
            # and our kill, so a fork bomb cannot outrun us.
            _write(state, "FROZEN")
            freeze_deadline = time.monotonic() + 0.5
            while state.read_text().strip() != "FROZEN" and time.monotonic() < freeze_deadline:
                await asyncio.sleep(0.001)
            self._kill_listed()
            _write(state, "THAWED")
            if await self._wait_empty(min(deadline, time.monotonic() + 0.2)):
                return True
            if time.monotonic() > deadline:
                return False

    def _kill_listed(self) -> None:
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    async def _wait_empty(self, until: float) -> bool:
        delay = 0.0005
        while self.pids():
            if time.monotonic() > until:
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.02)
        return True

    async def remove(self, timeout: float = 5.0) -> None:
        """rmdir every cgroup dir (possible only once empty); retried briefly."""
        deadline = time.monotonic() + timeout
        for d in self.dirs:
            while True:
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY or time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.005)


def list_sandbox_ids(root: Path = CGROUP_ROOT) -> set[str]:
    """Ids of every corral cgroup on the host (v1 and v2 layouts)."""
    ids: set[str] = set()
    for parent in [root / GROUP, *(root / c / GROUP for c in V1_CONTROLLERS)]:
        try:
            ids.update(p.name for p in parent.iterdir() if p.is_dir())
        except (FileNotFoundError, NotADirectoryError):
            pass
    return ids


def remove_parents(root: Path = CGROUP_ROOT) -> None:
    """Remove the corral parent cgroups if no sandbox is left in them (a server shutting down)."""
    for parent in [*(root / c / GROUP for c in V1_CONTROLLERS), root / GROUP]:
        try:
            parent.rmdir()
        except OSError:  # absent, or still holding sandboxes (EBUSY): both fine
            pass
