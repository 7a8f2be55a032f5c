"""envd's ``process.Process`` service (Connect RPC) on corral's manager.

Start, Connect, List, SendInput, StreamInput, SendSignal, CloseStdin and Update (PTY size).
Messages follow the proto3 JSON mapping (camelCase names, bytes as base64, enums by name).
"""

from __future__ import annotations

import base64
import binascii
import re
import signal as signals
from collections.abc import AsyncIterator, Callable
from typing import Any

from ... import errors
from ...manager import Manager
from ...schema import _check_envs
from .connect import Call, ConnectError, Method, with_keepalives
from .filesystem import absolute
from .live import running_ids

SIGNALS = {"SIGNAL_SIGTERM": signals.SIGTERM, "SIGNAL_SIGKILL": signals.SIGKILL, 15: signals.SIGTERM,
           9: signals.SIGKILL}
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]*$")
KEEPALIVE: dict[str, Any] = {"event": {"keepalive": {}}}


class ProcessService:
    def __init__(self, manager: Manager) -> None:
        self.m = manager
        self.ptys: dict[str, set[int]] = {}  # sandbox id -> pids started on a terminal (their output is pty bytes)

    def methods(self) -> dict[str, Method]:
        return {
            "Start": Method("server_stream", self.start),
            "Connect": Method("server_stream", self.connect),
            "List": Method("unary", self.list),
            "SendInput": Method("unary", self.send_input),
            "StreamInput": Method("client_stream", self.stream_input),
            "SendSignal": Method("unary", self.send_signal),
            "CloseStdin": Method("unary", self.close_stdin),
            "Update": Method("unary", self.update),
        }

    async def start(self, call: Call, msg: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        process = _obj(msg, "process")
        cmd = process.get("cmd")
        if not isinstance(cmd, str) or not cmd:
            raise ConnectError("invalid_argument", "process.cmd must be a non-empty string")
        args = process.get("args") or []
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise ConnectError("invalid_argument", "process.args must be a list of strings")
        envs = process.get("envs") or {}
        try:
            _check_envs(envs)
        except (ValueError, AttributeError) as e:
            raise ConnectError("invalid_argument", f"process.envs: {e}") from None
        cwd = process.get("cwd")
        if cwd is not None and not isinstance(cwd, str):
            raise ConnectError("invalid_argument", "process.cwd must be a string")
        pty = None
        if msg.get("pty") is not None:
            size = _obj(_obj(msg, "pty"), "size")
            pty = (_uint(size, "cols"), _uint(size, "rows"))
        tag = msg.get("tag")
        if tag is not None and not isinstance(tag, str):
            raise ConnectError("invalid_argument", "tag must be a string")
        stdin = msg.get("stdin", True)  # absent: true, as envd does for clients from before the field
        if pty is not None:
            stdin = True
        events = await self.m.start_process(
            call.sandbox_id, cmd, args, envs=envs, cwd=absolute(cwd, call.user) if cwd else None, user=call.user, timeout=call.timeout,
            stdin=bool(stdin), tag=tag, pty=pty,
        )
        on_start = None
        if pty is not None:
            live = set(running_ids(self.m))
            for gone in [s for s in self.ptys if s not in live]:
                del self.ptys[gone]
            on_start = self.ptys.setdefault(call.sandbox_id, set()).add
        return with_keepalives(_process_events(events, pty is not None, on_start), call.keepalive, KEEPALIVE)

    async def connect(self, call: Call, msg: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        pid = await self._pid(call, msg)
        is_pty = pid in self.ptys.get(call.sandbox_id, ())  # a PTY's output is pty bytes, as from Start
        events = await self.m.connect_command(call.sandbox_id, pid)
        return with_keepalives(_process_events(events, is_pty), call.keepalive, KEEPALIVE)

    async def list(self, call: Call, msg: dict[str, Any]) -> dict[str, Any]:
        processes = []
        for p in await self.m.list_commands(call.sandbox_id):
            config: dict[str, Any] = {"cmd": p["cmd"], "args": p.get("args") or [], "envs": {}}
            if p.get("cwd"):
                config["cwd"] = p["cwd"]
            item: dict[str, Any] = {"config": config, "pid": p["pid"]}
            if p.get("tag") is not None:
                item["tag"] = p["tag"]
            processes.append(item)
        return {"processes": processes}

    async def send_input(self, call: Call, msg: dict[str, Any]) -> dict[str, Any]:
        pid = await self._pid(call, msg)
        await self.m.send_stdin(call.sandbox_id, pid, _input(_obj(msg, "input")))
        return {}

    async def stream_input(self, call: Call, messages: AsyncIterator[dict[str, Any]]) -> dict[str, Any]:
        pid: int | None = None
        async for msg in messages:
            if "start" in msg:
                pid = await self._pid(call, _obj(msg, "start"))
            elif "data" in msg:
                if pid is None:
                    raise ConnectError("invalid_argument", "the first message must be a start event")
                await self.m.send_stdin(call.sandbox_id, pid, _input(_obj(_obj(msg, "data"), "input")))
        return {}

    async def send_signal(self, call: Call, msg: dict[str, Any]) -> dict[str, Any]:
        pid = await self._pid(call, msg)
        signum = SIGNALS.get(msg.get("signal"))
        if signum is None:
            raise ConnectError("invalid_argument", f"unsupported signal {msg.get('signal')!r}")
        await self.m.signal_command(call.sandbox_id, pid, int(signum))
        return {}

    async def close_stdin(self, call: Call, msg: dict[str, Any]) -> dict[str, Any]:
        await self.m.close_stdin(call.sandbox_id, await self._pid(call, msg))
        return {}

    async def update(self, call: Call, msg: dict[str, Any]) -> dict[str, Any]:
        pid = await self._pid(call, msg)
        if msg.get("pty") is not None:
            size = _obj(_obj(msg, "pty"), "size")
            await self.m.resize_pty(call.sandbox_id, pid, _uint(size, "cols"), _uint(size, "rows"))
        return {}

    async def _pid(self, call: Call, msg: dict[str, Any]) -> int:
        """The pid a ProcessSelector (``{"pid": N}`` or ``{"tag": str}``) names."""
        selector = _obj(msg, "process")
        if "pid" in selector:
            return _uint(selector, "pid")
        tag = selector.get("tag")
        if not isinstance(tag, str):
            raise ConnectError("invalid_argument", "process must select a pid or a tag")
        for p in await self.m.list_commands(call.sandbox_id):
            if p.get("tag") == tag:
                return int(p["pid"])
        raise ConnectError("not_found", f"no process with tag {tag!r}")


async def _process_events(
    events: AsyncIterator[dict[str, Any]], pty: bool, on_start: Callable[[int], None] | None = None
) -> AsyncIterator[dict[str, Any]]:
    """corral's command events as envd ProcessEvents; a command killed by its deadline ends the
    stream with deadline_exceeded, as envd's request context does."""
    async for event in events:
        kind = event.get("type")
        if kind == "start":
            if on_start is not None:
                on_start(event["pid"])
            yield {"event": {"start": {"pid": event["pid"]}}}
        elif kind in ("stdout", "stderr"):
            data = base64.b64encode(event["data"]).decode("ascii")
            yield {"event": {"data": {"pty" if pty else kind: data}}}
        elif kind == "end":
            if event.get("error") == "timeout":
                raise ConnectError("deadline_exceeded", "the command ran past its timeout and was killed")
            yield {"event": {"end": _end(event)}}
            return


def _end(event: dict[str, Any]) -> dict[str, Any]:
    code = int(event.get("exit_code") or 0)
    if event.get("error") == "killed":
        signame = {137: "killed", 143: "terminated"}.get(code, f"signal {code - 128}")
        return {"exitCode": -1, "exited": False, "status": f"signal: {signame}", "error": f"signal: {signame}"}
    end: dict[str, Any] = {"exited": True, "status": f"exit status {code}"}
    if code:
        end["exitCode"] = code
        end["error"] = f"exit status {code}"
    return end


def _obj(msg: dict[str, Any], key: str) -> dict[str, Any]:
    value = msg.get(key)
    if not isinstance(value, dict):
        raise ConnectError("invalid_argument", f"{key} must be a message")
    return value


def _uint(msg: dict[str, Any], key: str) -> int:
    value = msg.get(key, 0)
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**32:
        raise ConnectError("invalid_argument", f"{key} must be an unsigned integer")
    return value


def _input(value: dict[str, Any]) -> bytes:
    data = value.get("stdin", value.get("pty"))
    if not isinstance(data, str):
        raise ConnectError("invalid_argument", "input must hold stdin or pty bytes")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        try:
            return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
        except (binascii.Error, ValueError):
            raise ConnectError("invalid_argument", "input bytes must be base64") from None


def user_from(authorization: str | None) -> str:
    """The user of an envd call: HTTP Basic ``user:`` (empty password), default ``user``."""
    if not authorization:
        return "user"
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "basic":
        raise errors.AuthenticationError("only Basic authorization selects a user")
    try:
        name = base64.b64decode(value.strip()).decode("utf-8").partition(":")[0]
    except (binascii.Error, ValueError):
        raise errors.AuthenticationError("malformed Basic authorization") from None
    if not USER_RE.fullmatch(name) or len(name) > 32:
        raise errors.AuthenticationError(f"invalid user {name[:40]!r}")
    return name
