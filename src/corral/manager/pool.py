"""A warm pool: a few started sandboxes per template, so create is a claim plus configure.

Pooled sandboxes are not in the store (no user owns them yet); a crashed server's pooled
sandboxes are orphans that the backend reaps at the next start.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from ..agent.client import AgentClient
from ..backends import Limits, SandboxHandle, SandboxSpec
from ..templates.store import Resolved

if TYPE_CHECKING:
    from .service import Manager

log = logging.getLogger("corral.pool")

REFILL_DELAY = 0.05  # seconds after a claim before a refill starts, unless the pool ran dry


class Pool:
    def __init__(self, manager: Manager, size: int) -> None:
        self.manager = manager
        self.size = size
        self.ready: dict[str, list[SandboxHandle]] = {}
        self.wanted: set[str] = {"base"}
        self._wake = asyncio.Event()
        self._last_claim = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.size > 0:
            self._task = asyncio.get_running_loop().create_task(self._fill_forever())

    def ready_count(self) -> int:
        return sum(len(handles) for handles in self.ready.values())

    async def claim(self, template: str, resolved: Resolved) -> SandboxHandle | None:
        """A started sandbox of ``resolved`` (what ``template`` names now), or None.

        Templates with a start command are not pooled (their start runs at create).
        """
        if self.size <= 0 or resolved.config.start_cmd:
            return None
        self.wanted.add(template)
        self._last_claim = time.monotonic()
        self._wake.set()
        ready = self.ready.get(template)
        while ready:
            handle = ready.pop()
            same = handle.state.get("template") == str(resolved.template_dir) and handle.state.get("layers", []) == [
                str(p) for p in resolved.layers
            ]
            if same and await self.manager.backend.is_alive(handle):
                handle.state["pooled"] = True
                return handle
            await self.manager.backend.cleanup(handle)  # dead, or of an older build of the template
        return None

    async def drop(self, template: str) -> None:
        """Free the pooled sandboxes of a template (it is being deleted)."""
        handles = self.ready.pop(template, []) + self.ready.pop(template.removesuffix(":latest"), [])
        self.wanted.discard(template)
        self.wanted.discard(template.removesuffix(":latest"))
        await asyncio.gather(*(self.manager.backend.cleanup(h) for h in handles), return_exceptions=True)

    async def _fill_forever(self) -> None:
        while True:
            try:
                await self._fill_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("filling the warm pool")
                await asyncio.sleep(5)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=5)
            except TimeoutError:
                pass

    async def _fill_once(self) -> None:
        from .service import new_sandbox_id

        s = self.manager.settings
        for template in sorted(self.wanted):
            try:
                resolved = self.manager.templates.resolve(template)
            except Exception:
                self.wanted.discard(template)
                continue
            if resolved.config.start_cmd:
                self.wanted.discard(template)
                continue
            ready = self.ready.setdefault(template, [])
            while len(ready) < self.size and len(self.manager.live) + len(ready) < s.max_sandboxes:
                await self._quiet(bool(ready))
                spec = SandboxSpec(
                    sandbox_id=new_sandbox_id(),
                    template_dir=resolved.template_dir,
                    layers=resolved.layers,
                    limits=Limits(cpu_count=s.default_cpu_count, memory_mb=s.default_memory_mb, disk_mb=s.default_disk_mb),
                    internet=True,  # the API's default, so a claim usually changes nothing
                )
                handle = await self.manager.backend.start(spec)
                try:
                    await _warm_up(handle)
                except BaseException:  # a failure, or the pool closing: the sandbox is nobody's
                    await asyncio.shield(self.manager.backend.cleanup(handle))
                    raise
                if self.ready.get(template) is not ready:  # dropped meanwhile (its template was deleted)
                    await self.manager.backend.cleanup(handle)
                    break
                ready.append(handle)

    async def _quiet(self, have_some: bool) -> None:
        """Refill a little after the last claim, not during it: the claimer's first commands run now.

        An empty pool refills at once (creates are arriving faster than the delay).
        """
        if not have_some:
            return
        while (wait := REFILL_DELAY - (time.monotonic() - self._last_claim)) > 0:
            await asyncio.sleep(wait)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        handles = [h for ready in self.ready.values() for h in ready]
        self.ready.clear()
        await asyncio.gather(*(self.manager.backend.cleanup(h) for h in handles), return_exceptions=True)


async def _warm_up(handle: SandboxHandle) -> None:
    """Run one login shell, so the claimer's first command finds the agent and the caches warm."""
    async for _ in AgentClient(handle.agent_socket).exec(
        cmd="/bin/bash", args=["-l", "-c", "true"], envs={}, cwd=None, user="user", timeout=10, stdin=False, tag=None
    ):
        pass
