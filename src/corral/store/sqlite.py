"""SQLite store for sandboxes and their lifecycle events.

Writes are small and few per sandbox (create, state changes, timeout changes), so they run
inline on the event loop thread; WAL mode keeps them well under a millisecond.
"""

from __future__ import annotations

import builtins
import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS sandboxes (
    id TEXT PRIMARY KEY,
    template TEXT NOT NULL,
    state TEXT NOT NULL,
    backend TEXT NOT NULL,
    created_at REAL NOT NULL,
    end_at REAL NOT NULL,
    ended_at REAL,
    reason TEXT,
    metadata TEXT NOT NULL DEFAULT '{}',
    envs TEXT NOT NULL DEFAULT '{}',
    cpu_count REAL NOT NULL,
    memory_mb INTEGER NOT NULL,
    disk_mb INTEGER NOT NULL,
    internet INTEGER NOT NULL,
    backend_state TEXT NOT NULL DEFAULT '{}',
    url_secret TEXT NOT NULL DEFAULT '',
    public_ports INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS sandboxes_state ON sandboxes(state);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    sandbox_id TEXT NOT NULL,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS events_sandbox ON events(sandbox_id, seq);
"""


@dataclass
class SandboxRecord:
    id: str
    template: str
    state: str
    backend: str
    created_at: float
    end_at: float
    cpu_count: float
    memory_mb: int
    disk_mb: int
    internet: bool
    metadata: dict[str, str] = field(default_factory=dict)
    envs: dict[str, str] = field(default_factory=dict)
    ended_at: float | None = None
    reason: str | None = None
    backend_state: dict[str, Any] = field(default_factory=dict)
    url_secret: str = ""  # hex key that signs this sandbox's file URLs (and derives its traffic token)
    public_ports: bool = True  # its ports are reachable without the traffic token


_COLUMNS = (
    "id", "template", "state", "backend", "created_at", "end_at", "ended_at", "reason",
    "metadata", "envs", "cpu_count", "memory_mb", "disk_mb", "internet", "backend_state",
    "url_secret", "public_ports",
)
_JSON = {"metadata", "envs", "backend_state"}


class Store:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Add the columns that databases made by older versions lack."""
        have = {row[1] for row in self._db.execute("PRAGMA table_info(sandboxes)")}
        if "url_secret" not in have:
            self._db.execute("ALTER TABLE sandboxes ADD COLUMN url_secret TEXT NOT NULL DEFAULT ''")
        if "public_ports" not in have:
            self._db.execute("ALTER TABLE sandboxes ADD COLUMN public_ports INTEGER NOT NULL DEFAULT 1")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _row(self, row: tuple) -> SandboxRecord:
        values = dict(zip(_COLUMNS, row, strict=True))
        for key in _JSON:
            values[key] = json.loads(values[key])
        values["internet"] = bool(values["internet"])
        values["public_ports"] = bool(values["public_ports"])
        return SandboxRecord(**values)

    def insert(self, rec: SandboxRecord) -> None:
        values = [getattr(rec, c) for c in _COLUMNS]
        values = [json.dumps(v) if c in _JSON else v for c, v in zip(_COLUMNS, values, strict=True)]
        with self._lock:
            self._db.execute(
                f"INSERT INTO sandboxes ({','.join(_COLUMNS)}) VALUES ({','.join('?' * len(_COLUMNS))})", values
            )

    def update(self, sandbox_id: str, **changes: Any) -> None:
        cols = [c for c in changes if c in _COLUMNS and c != "id"]
        values = [json.dumps(changes[c]) if c in _JSON else changes[c] for c in cols]
        with self._lock:
            self._db.execute(
                f"UPDATE sandboxes SET {', '.join(f'{c}=?' for c in cols)} WHERE id=?", [*values, sandbox_id]
            )

    def get(self, sandbox_id: str) -> SandboxRecord | None:
        with self._lock:
            row = self._db.execute(f"SELECT {','.join(_COLUMNS)} FROM sandboxes WHERE id=?", (sandbox_id,)).fetchone()
        return self._row(row) if row else None

    def list(self, states: list[str] | None = None, limit: int = 1000) -> list[SandboxRecord]:
        query = f"SELECT {','.join(_COLUMNS)} FROM sandboxes"
        args: builtins.list[Any] = []
        if states:
            query += f" WHERE state IN ({','.join('?' * len(states))})"
            args += states
        query += " ORDER BY created_at DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(query, [*args, limit]).fetchall()
        return [self._row(r) for r in rows]

    def add_event(self, sandbox_id: str, kind: str, **data: Any) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO events (sandbox_id, at, kind, data) VALUES (?, ?, ?, ?)",
                (sandbox_id, time.time(), kind, json.dumps(data)),
            )

    def events(self, sandbox_id: str) -> builtins.list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT at, kind, data FROM events WHERE sandbox_id=? ORDER BY seq", (sandbox_id,)
            ).fetchall()
        return [{"at": at, "kind": kind, **json.loads(data)} for at, kind, data in rows]
