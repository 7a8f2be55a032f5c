"""Which sandboxes run, through the manager's public actions (``get``, ``list``)."""

from __future__ import annotations

from ... import errors
from ...manager import Manager, SandboxRecord, State


def running(m: Manager, sandbox_id: str) -> SandboxRecord | None:
    """The record of a running sandbox, or None (unknown id, or ended)."""
    try:
        rec = m.get(sandbox_id)
    except errors.NotFoundError:
        return None
    return rec if rec.state == State.RUNNING else None


def running_ids(m: Manager) -> list[str]:
    return [rec.id for rec in m.list(states=[State.RUNNING.value])]
