"""Persistence: sandboxes and their events, in SQLite."""

from .sqlite import SandboxRecord, Store

__all__ = ["SandboxRecord", "Store"]
