"""A template's start command at sandbox start, and its ready check."""

from __future__ import annotations

import asyncio
import time

from .. import errors
from ..agent.client import AgentClient
from ..templates.store import Resolved


async def start_and_wait_ready(agent: AgentClient, template: Resolved, timeout: float) -> None:
    """Start the template's start command in the background; return once its ready check passes.

    Without a ready check, create returns as soon as the start command has started.
    """
    cfg = template.config
    assert cfg.start_cmd is not None
    stream = agent.exec(
        cmd="/bin/bash", args=["-l", "-c", cfg.start_cmd], envs={}, cwd=cfg.workdir, user=cfg.user, tag="start_cmd"
    )
    try:
        await stream.__anext__()  # the start event (or the agent's error: an unknown user, ...)
    finally:
        await stream.aclose()  # type: ignore[attr-defined]  # it keeps running in the background
    if not cfg.ready_cmd:
        return
    deadline = time.monotonic() + timeout
    output = ""
    while True:
        code = None
        output = ""
        async for event in agent.exec(
            cmd="/bin/bash", args=["-l", "-c", cfg.ready_cmd], envs={}, cwd=cfg.workdir, user=cfg.user, timeout=10
        ):
            if event.get("type") in ("stdout", "stderr"):
                output = (output + event["data"].decode(errors="replace"))[-500:]
            elif event.get("type") == "end":
                code = event.get("exit_code")
        if code == 0:
            return
        if time.monotonic() > deadline:
            raise errors.SandboxFailedError(
                f"the start command of template {template.ref} did not become ready within {timeout:.0f} s "
                f"(ready check `{cfg.ready_cmd}` exited {code}: {output.strip()[-300:]})"
            )
        await asyncio.sleep(0.1)  # the next probe of the ready check (a poll with a deadline)
