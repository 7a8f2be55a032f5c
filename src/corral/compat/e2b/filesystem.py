"""envd's ``filesystem.Filesystem`` service (Connect RPC) on corral's manager.

Stat, MakeDir, Move, ListDir, Remove, the streaming WatchDir and the polled watchers
(CreateWatcher, GetWatcherEvents, RemoveWatcher) that the sync SDK uses.
"""

from __future__ import annotations

import asyncio
import posixpath
import secrets
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from ... import errors
from ...manager import Manager
from .connect import Call, ConnectError, Method, with_keepalives
from .live import running_ids

FILE_TYPES = {"file": "FILE_TYPE_FILE", "dir": "FILE_TYPE_DIRECTORY", "symlink": "FILE_TYPE_SYMLINK"}
MODE_CHAR = {"file": "-", "dir": "d", "symlink": "L"}
EVENT_TYPES = {"create": "EVENT_TYPE_CREATE", "write": "EVENT_TYPE_WRITE", "remove": "EVENT_TYPE_REMOVE",
               "rename": "EVENT_TYPE_RENAME", "chmod": "EVENT_TYPE_CHMOD"}
MAX_WATCHERS = 64  # polled watchers per sandbox
MAX_PENDING_EVENTS = 10_000  # per polled watcher; older events are dropped first
MAX_DEPTH = 32


def entry(info: dict[str, Any]) -> dict[str, Any]:
    """corral's EntryInfo as envd's (proto3 JSON: int64 size as a string, enums by name; a
    directory's size is 0, as envd reports it)."""
    kind = info.get("type", "file")
    out: dict[str, Any] = {
        "name": info["name"], "type": FILE_TYPES.get(kind, "FILE_TYPE_UNSPECIFIED"), "path": info["path"],
        "size": str(info.get("size", 0) if kind != "dir" else 0), "mode": int(info.get("mode", 0)),
        "permissions": MODE_CHAR.get(kind, "-") + info.get("permissions", ""),
        "owner": info.get("owner", ""), "group": info.get("group", ""), "modifiedTime": info.get("modified_time"),
    }
    if info.get("metadata"):
        out["metadata"] = info["metadata"]
    if kind == "symlink":
        out["isSymlink"] = True
        if info.get("symlink_target") is not None:
            out["symlinkTarget"] = info["symlink_target"]
    return out


def absolute(path: str, user: str) -> str:
    """A path as envd resolves it: relative to the user's home, ``~`` expanded."""
    home = "/root" if user == "root" else f"/home/{user}"
    if path == "~" or path.startswith("~/"):
        path = home + path[1:]
    if not path.startswith("/"):
        path = f"{home}/{path}" if path else home
    return posixpath.normpath(path) if path != "/" else path


@dataclass
class Watcher:
    sandbox_id: str
    task: asyncio.Task[None] | None = None
    events: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_PENDING_EVENTS))
    error: ConnectError | None = None


class FilesystemService:
    def __init__(self, manager: Manager) -> None:
        self.m = manager
        self.watchers: dict[str, Watcher] = {}

    def methods(self) -> dict[str, Method]:
        return {
            "Stat": Method("unary", self.stat),
            "MakeDir": Method("unary", self.make_dir),
            "Move": Method("unary", self.move),
            "ListDir": Method("unary", self.list_dir),
            "Remove": Method("unary", self.remove),
            "WatchDir": Method("server_stream", self.watch_dir),
            "CreateWatcher": Method("unary", self.create_watcher),
            "GetWatcherEvents": Method("unary", self.get_watcher_events),
            "RemoveWatcher": Method("unary", self.remove_watcher),
        }

    async def stat(self, call: Call, msg: dict[str, Any]) -> dict[str, Any]:
        return {"entry": entry(await self.m.stat(call.sandbox_id, _path(call, msg), call.user))}

    async def make_dir(self, call: Call, msg: dict[str, Any]) -> dict[str, Any]:
        path = _path(call, msg)
        try:
            created = await self.m.make_dir(call.sandbox_id, path, call.user)
        except (errors.FileExistsError_, errors.NotADirectoryError_):
            created = False
        info = await self.m.stat(call.sandbox_id, path, call.user)
        if not created:
            if info.get("type") == "dir":
                raise ConnectError("already_exists", f"directory {path} already exists")
            raise ConnectError("invalid_argument", f"path {path} already exists and is not a directory")
        return {"entry": entry(info)}

    async def move(self, call: Call, msg: dict[str, Any]) -> dict[str, Any]:
        src, dst = _str(msg, "source"), _str(msg, "destination")
        src, dst = absolute(src, call.user), absolute(dst, call.user)
        return {"entry": entry(await self.m.rename(call.sandbox_id, src, dst, call.user))}

    async def list_dir(self, call: Call, msg: dict[str, Any]) -> dict[str, Any]:
        path = _path(call, msg)
        depth = msg.get("depth") or 1
        if not isinstance(depth, int) or depth < 1:
            raise ConnectError("invalid_argument", "depth must be a positive integer")
        info = await self.m.stat(call.sandbox_id, path, call.user)
        if info.get("type") != "dir":
            raise ConnectError("invalid_argument", f"path {path} is not a directory")
        entries = await self.m.list_dir(call.sandbox_id, path, min(depth, MAX_DEPTH), call.user)
        return {"entries": [entry(e) for e in entries]}

    async def remove(self, call: Call, msg: dict[str, Any]) -> dict[str, Any]:
        try:
            await self.m.remove(call.sandbox_id, _path(call, msg), call.user)
        except errors.FileNotFoundError_:
            pass  # as envd: removing what is not there is not an error
        return {}

    # ------------------------------------------------------------------ watching

    async def _watch(self, call: Call, msg: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """FilesystemEvents under a directory (raises its error before the first one)."""
        path = _path(call, msg)
        info = await self.m.stat(call.sandbox_id, path, call.user)
        if info.get("type") != "dir":
            raise ConnectError("invalid_argument", f"path {path} is not a directory")
        events = await self.m.watch_dir(call.sandbox_id, path, bool(msg.get("recursive")), call.user)
        include_entry = bool(msg.get("includeEntry", msg.get("include_entry")))

        async def converted() -> AsyncIterator[dict[str, Any]]:
            async with _closing(events):
                async for event in events:
                    kind = EVENT_TYPES.get(event.get("type", ""))
                    if kind is None:
                        continue  # start and keepalives
                    name = posixpath.relpath(event["path"], path) if event["path"] != path else ""
                    out: dict[str, Any] = {"name": name, "type": kind}
                    if include_entry and kind != "EVENT_TYPE_REMOVE":
                        try:
                            out["entry"] = entry(await self.m.stat(call.sandbox_id, event["path"], call.user))
                        except errors.NotFoundError:
                            pass  # gone again already
                    yield out

        return converted()

    async def watch_dir(self, call: Call, msg: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        events = await self._watch(call, msg)

        async def stream() -> AsyncIterator[dict[str, Any]]:
            yield {"start": {}}
            async with _closing(events):
                async for event in events:
                    yield {"filesystem": event}

        return with_keepalives(stream(), call.keepalive, {"keepalive": {}})

    async def create_watcher(self, call: Call, msg: dict[str, Any]) -> dict[str, Any]:
        self._forget_ended()
        if sum(1 for w in self.watchers.values() if w.sandbox_id == call.sandbox_id) >= MAX_WATCHERS:
            raise ConnectError("resource_exhausted", f"at most {MAX_WATCHERS} watchers per sandbox")
        events = await self._watch(call, msg)
        watcher = Watcher(call.sandbox_id)

        async def collect() -> None:
            try:
                async with _closing(events):
                    async for event in events:
                        watcher.events.append(event)
            except errors.CorralError as e:
                watcher.error = ConnectError("unavailable", f"the watch ended: {e.message}")

        watcher.task = asyncio.get_running_loop().create_task(collect())
        watcher_id = "w" + secrets.token_hex(8)
        self.watchers[watcher_id] = watcher
        return {"watcherId": watcher_id}

    async def get_watcher_events(self, call: Call, msg: dict[str, Any]) -> dict[str, Any]:
        watcher = self._watcher(call, msg)
        events = list(watcher.events)
        watcher.events.clear()
        if not events and watcher.error is not None:
            raise watcher.error
        return {"events": events}

    async def remove_watcher(self, call: Call, msg: dict[str, Any]) -> dict[str, Any]:
        watcher = self._watcher(call, msg)
        self.watchers.pop(_str(msg, "watcherId", "watcher_id"), None)
        if watcher.task is not None:
            watcher.task.cancel()
        return {}

    def _watcher(self, call: Call, msg: dict[str, Any]) -> Watcher:
        watcher = self.watchers.get(_str(msg, "watcherId", "watcher_id"))
        if watcher is None or watcher.sandbox_id != call.sandbox_id:
            raise ConnectError("not_found", "no such watcher")
        return watcher

    def _forget_ended(self) -> None:
        live = set(running_ids(self.m))
        for wid, w in list(self.watchers.items()):
            if w.sandbox_id not in live:
                if w.task is not None:
                    w.task.cancel()
                del self.watchers[wid]


class _closing:
    """``async with``: aclose an async generator at the end."""

    def __init__(self, gen: Any) -> None:
        self.gen = gen

    async def __aenter__(self) -> Any:
        return self.gen

    async def __aexit__(self, *exc: object) -> None:
        aclose = getattr(self.gen, "aclose", None)
        if aclose is not None:
            await aclose()


def _str(msg: dict[str, Any], key: str, alt: str | None = None) -> str:
    value = msg.get(key, msg.get(alt) if alt else None)
    if not isinstance(value, str) or not value or "\0" in value or len(value) > 4096:
        raise ConnectError("invalid_argument", f"{key} must be a non-empty string")
    return value


def _path(call: Call, msg: dict[str, Any]) -> str:
    return absolute(_str(msg, "path"), call.user)
