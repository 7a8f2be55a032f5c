"""E2B's control-plane REST API (``/sandboxes``, ``/v2/sandboxes``, ``/templates``) on corral's manager.

Answers carry E2B's field names; errors are ``{"code": <status>, "message"}``, which the SDK
parses. What corral cannot do (pause, fork, snapshots, volumes, template builds) answers with a
clear error instead of pretending.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, parse_qsl

from pydantic import ValidationError

from ... import __version__, errors
from ...manager import Manager, SandboxRecord, traffic_token
from ...schema import CreateSandbox, UpdateNetwork
from .asgi import Scope, json_object, read_body, send_empty, send_json, str_map
from .envd import ENVD_VERSION, access_token
from .live import running

# E2B's template names and corral's.
TEMPLATES = {"base": "base", "code-interpreter-v1": "code-interpreter"}
E2B_NAMES = {v: k for k, v in TEMPLATES.items()}
DEFAULT_PAGE, MAX_PAGE = 100, 100
NO_RETRY = [(b"should-retry", b"false")]

Handler = Callable[..., Awaitable[None]]


class E2BError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def unsupported(what: str) -> E2BError:
    return E2BError(501, f"{what} is not supported by corral")


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Control:
    def __init__(self, manager: Manager, domain: str | None) -> None:
        self.m, self.domain = manager, domain
        s = r"(?P<sid>[^/]+)"
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = [
            ("POST", re.compile(r"/(?:v2/)?sandboxes"), self.create),
            ("GET", re.compile(r"/sandboxes"), self.list_v1),
            ("GET", re.compile(r"/v2/sandboxes"), self.list_v2),
            ("GET", re.compile(rf"/sandboxes/{s}"), self.info),
            ("DELETE", re.compile(rf"/sandboxes/{s}"), self.kill),
            ("POST", re.compile(rf"/sandboxes/{s}/timeout"), self.set_timeout),
            ("POST", re.compile(rf"/(?:v2/)?sandboxes/{s}/connect"), self.connect),
            ("POST", re.compile(rf"/sandboxes/{s}/resume"), self.resume),
            ("GET", re.compile(rf"/sandboxes/{s}/metrics"), self.metrics),
            ("POST", re.compile(rf"/sandboxes/{s}/pause"), self.pause),
            ("PUT", re.compile(rf"/sandboxes/{s}/network"), self.update_network),
            ("GET", re.compile(r"/templates"), self.templates),
            ("GET", re.compile(r"/templates/aliases/(?P<alias>[^/]+)"), self.template_alias),
        ]

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        path, method = scope["path"].rstrip("/") or "/", scope["method"]
        try:
            for verb, pattern, handler in self.routes:
                match = pattern.fullmatch(path)
                if match and verb == method:
                    return await handler(scope, receive, send, **match.groupdict())
            raise _not_offered(method, path)
        except E2BError as e:
            await send_json(send, e.status, {"code": e.status, "message": e.message}, NO_RETRY)
        except errors.CorralError as err:
            status = 404 if isinstance(err, errors.SandboxNotRunningError) else err.status
            await send_json(send, status, {"code": status, "message": err.message}, NO_RETRY)

    # ------------------------------------------------------------------ sandboxes

    async def create(self, scope: Scope, receive: Any, send: Any) -> None:
        body = json_object(await read_body(receive))
        template = body.get("templateID") or "base"
        if not isinstance(template, str):
            raise E2BError(400, "templateID must be a string")
        _refuse_unsupported(body)
        timeout = body.get("timeout")
        internet = body.get("allow_internet_access", True)
        network = body.get("network") or {}
        public = network.get("allowPublicTraffic")
        try:
            req = CreateSandbox.model_validate({
                "template": TEMPLATES.get(template, template), "timeout": timeout,
                "metadata": str_map(body, "metadata"), "envs": str_map(body, "envVars"),
                "internet": internet if internet is not None else True,
                "public_ports": public is not False,
                "allow_out": _str_list(network, "allowOut"), "deny_out": _str_list(network, "denyOut"),
            })
        except ValidationError as e:
            raise E2BError(400, _validation_message(e)) from None
        rec = await self.m.create(req)
        await send_json(send, 201, self._sandbox(rec, template))

    async def connect(self, scope: Scope, receive: Any, send: Any, sid: str) -> None:
        body = json_object(await read_body(receive))
        rec = self._live(sid)
        timeout = body.get("timeout")
        if timeout is not None:
            if not isinstance(timeout, int) or isinstance(timeout, bool) or timeout < 0:
                raise E2BError(400, "timeout must be a non-negative integer")
            if time.time() + timeout > rec.end_at:  # connecting only ever extends the lifetime
                rec = await self.m.set_timeout(sid, timeout)
        await send_json(send, 200, self._sandbox(rec))

    async def resume(self, scope: Scope, receive: Any, send: Any, sid: str) -> None:
        self._live(sid)
        raise E2BError(409, f"sandbox {sid} is already running")

    async def info(self, scope: Scope, receive: Any, send: Any, sid: str) -> None:
        rec = self._live(sid)
        detail = {**self._listed(rec), "envdAccessToken": access_token(self.m, sid),
                  "allowInternetAccess": rec.internet, "domain": self.domain,
                  "lifecycle": {"autoResume": False, "onTimeout": "kill"}}
        await send_json(send, 200, detail)

    async def list_v1(self, scope: Scope, receive: Any, send: Any) -> None:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        records = self._filtered(query)
        await send_json(send, 200, [self._listed(r) for r in records])

    async def list_v2(self, scope: Scope, receive: Any, send: Any) -> None:
        """A page of sandboxes, newest first (``order=asc`` for oldest first); the next page's
        token comes in the ``X-Next-Token`` header."""
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        records = self._filtered(query)
        if _one(query, "order") == "asc":
            records.reverse()
        limit = _one(query, "limit") or str(DEFAULT_PAGE)
        if not limit.isdigit() or not 1 <= int(limit) <= MAX_PAGE:
            raise E2BError(400, f"limit must be between 1 and {MAX_PAGE}")
        start = 0
        token = _one(query, "nextToken")
        if token:
            after = _decode_token(token)
            keys = [(r.created_at, r.id) for r in records]
            start = next((i + 1 for i, k in enumerate(keys) if k[1] == after), None) or 0
            if start == 0:
                raise E2BError(400, "nextToken is invalid or its sandbox is gone; list again from the start")
        page = records[start : start + int(limit)]
        headers = [(b"x-total-running", str(len(records)).encode())]
        if start + int(limit) < len(records):
            headers.append((b"x-next-token", base64.urlsafe_b64encode(page[-1].id.encode()).rstrip(b"=")))
        await send_json(send, 200, [self._listed(r) for r in page], headers)

    async def set_timeout(self, scope: Scope, receive: Any, send: Any, sid: str) -> None:
        body = json_object(await read_body(receive))
        timeout = body.get("timeout")
        if not isinstance(timeout, int) or isinstance(timeout, bool) or timeout < 1:
            raise E2BError(400, "timeout must be a positive integer (seconds from now)")
        await self.m.set_timeout(sid, timeout)
        await send_empty(send)

    async def kill(self, scope: Scope, receive: Any, send: Any, sid: str) -> None:
        await self.m.kill(sid)
        await send_empty(send)

    async def metrics(self, scope: Scope, receive: Any, send: Any, sid: str) -> None:
        """One sample, taken now (corral keeps no history): empty if ``start``/``end`` exclude now."""
        self._live(sid)
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        bounds = []
        for key in ("start", "end"):
            raw = _one(query, key)
            if raw is not None and not raw.isdigit():
                raise E2BError(400, f"{key} must be a unix time in seconds")
            bounds.append(int(raw) if raw else None)
        u = await self.m.usage(sid)
        now = int(u["time"])
        if (bounds[0] is not None and now < bounds[0]) or (bounds[1] is not None and now > bounds[1]):
            return await send_json(send, 200, [])
        sample = {
            "timestamp": rfc3339(u["time"]), "timestampUnix": now, "cpuCount": max(1, round(u["cpu_count"])),
            "cpuUsedPct": u["cpu_used_pct"], "memUsed": u["memory_used"], "memTotal": u["memory_limit"],
            "memCache": u["memory_cache"], "diskUsed": u["disk_used"], "diskTotal": u["disk_total"],
        }
        await send_json(send, 200, [sample])

    async def update_network(self, scope: Scope, receive: Any, send: Any, sid: str) -> None:
        """Replace the egress rules (what the body leaves out is cleared, as in E2B); internet
        access changes only when ``allow_internet_access`` is given."""
        body = json_object(await read_body(receive))
        self._live(sid)
        _refuse_unsupported_network(body)
        internet = body.get("allow_internet_access")
        if internet is not None and not isinstance(internet, bool):
            raise E2BError(400, "allow_internet_access must be a boolean")
        try:
            req = UpdateNetwork.model_validate({
                "internet": internet, "allow_out": _str_list(body, "allowOut"), "deny_out": _str_list(body, "denyOut"),
            })
        except ValidationError as e:
            raise E2BError(400, _validation_message(e)) from None
        await self.m.update_network(sid, req)
        await send_empty(send)

    async def pause(self, scope: Scope, receive: Any, send: Any, sid: str) -> None:
        self._live(sid)
        raise unsupported("pausing a sandbox")

    # ------------------------------------------------------------------ templates

    async def templates(self, scope: Scope, receive: Any, send: Any) -> None:
        out = []
        for t in self.m.list_templates():
            e2b_name = E2B_NAMES.get(t.name, t.name) if t.tag == "latest" else f"{t.name}:{t.tag}"
            stamp = rfc3339(t.created_at)
            out.append({
                "templateID": e2b_name, "buildID": t.build_id or t.key, "cpuCount": 1,
                "memoryMB": self.m.settings.default_memory_mb, "diskSizeMB": self.m.settings.default_disk_mb,
                "public": True, "aliases": [e2b_name], "names": [e2b_name], "createdAt": stamp, "updatedAt": stamp,
                "createdBy": None, "lastSpawnedAt": None, "spawnCount": 0, "buildCount": 1,
                "envdVersion": ENVD_VERSION, "buildStatus": "ready",
            })
        await send_json(send, 200, out)

    async def template_alias(self, scope: Scope, receive: Any, send: Any, alias: str) -> None:
        try:
            self.m.get_template(TEMPLATES.get(alias, alias))
        except errors.NotFoundError:
            raise E2BError(404, f"template {alias!r} not found") from None
        await send_json(send, 200, {"templateID": alias, "public": True})

    # ------------------------------------------------------------------ rendering

    def _live(self, sid: str) -> SandboxRecord:
        rec = running(self.m, sid)
        if rec is None:
            raise E2BError(404, f"sandbox {sid} not found")
        return rec

    def _sandbox(self, rec: SandboxRecord, template: str | None = None) -> dict[str, Any]:
        name = template or E2B_NAMES.get(rec.template, rec.template)
        return {
            "templateID": name, "alias": name, "sandboxID": rec.id, "clientID": "corral",
            "envdVersion": ENVD_VERSION, "envdAccessToken": access_token(self.m, rec.id),
            # Private port URLs (allowPublicTraffic=false) ask for it, in E2B's header or corral's.
            "trafficAccessToken": None if rec.public_ports else traffic_token(rec), "domain": self.domain,
        }

    def _listed(self, rec: SandboxRecord) -> dict[str, Any]:
        name = E2B_NAMES.get(rec.template, rec.template)
        return {
            "templateID": name, "alias": name, "sandboxID": rec.id, "clientID": "corral",
            "startedAt": rfc3339(rec.created_at), "endAt": rfc3339(rec.end_at), "cpuCount": max(1, round(rec.cpu_count)),
            "memoryMB": rec.memory_mb, "diskSizeMB": rec.disk_mb, "state": "running", "envdVersion": ENVD_VERSION,
            "metadata": rec.metadata,
        }

    def _filtered(self, query: dict[str, list[str]]) -> list[SandboxRecord]:
        states = {s.strip() for v in query.get("state", []) for s in v.split(",") if s.strip()}
        if states - {"running", "paused"}:
            raise E2BError(400, f"unknown state {sorted(states - {'running', 'paused'})[0]!r}: states are running, paused")
        if states and "running" not in states:
            return []  # corral never pauses a sandbox
        wanted: dict[str, str] = {}
        for raw in query.get("metadata", []):
            wanted.update(parse_qsl(raw, keep_blank_values=True))
        records = self.m.list(states=["running"], metadata=wanted)
        template = _one(query, "template")
        if template:
            records = [r for r in records if r.template == TEMPLATES.get(template, template)]
        after = _one(query, "startedAfter")
        if after:
            try:
                since = datetime.fromisoformat(after.replace("Z", "+00:00")).timestamp()
            except ValueError:
                raise E2BError(400, "startedAfter must be an RFC 3339 date-time") from None
            records = [r for r in records if r.created_at > since]
        return records  # newest first


def _one(query: dict[str, list[str]], key: str) -> str | None:
    values = query.get(key)
    return values[0] if values else None


def _decode_token(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, ValueError):
        raise E2BError(400, "nextToken is invalid") from None


def _refuse_unsupported(body: dict[str, Any]) -> None:
    """Fail a create that asks for what corral would silently not do."""
    if body.get("autoPause"):
        raise unsupported("autoPause (pausing sandboxes)")
    if isinstance(body.get("autoResume"), dict) and body["autoResume"].get("enabled"):
        raise unsupported("autoResume (pausing sandboxes)")
    if body.get("mcp"):
        raise unsupported("an MCP gateway (mcp)")
    if body.get("volumeMounts"):
        raise unsupported("volume mounts (volumeMounts)")
    network = body.get("network") or {}
    if not isinstance(network, dict):
        raise E2BError(400, "network must be an object")
    _refuse_unsupported_network(network)


def _refuse_unsupported_network(network: dict[str, Any]) -> None:
    for key in ("egressProxy", "rules", "dnsServers", "maskRequestHost", "httpsPorts"):
        if network.get(key):
            raise unsupported(f"network.{key}")


def _str_list(body: dict[str, Any], key: str) -> list[str]:
    value = body.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise E2BError(400, f"network.{key} must be a list of strings")
    return value


def _not_offered(method: str, path: str) -> E2BError:
    for prefix, what in (("/volumes", "volumes"), ("/secrets", "secrets"), ("/snapshots", "snapshots"),
                         ("/v2/templates", "building templates through the E2B API"),
                         ("/v3/templates", "building templates through the E2B API"),
                         ("/templates", "managing templates through the E2B API")):
        if path.startswith(prefix):
            return unsupported(what)
    if re.fullmatch(r"/sandboxes/[^/]+/(fork|snapshots|network|refreshes)", path):
        return unsupported(path.rsplit("/", 1)[1])
    return E2BError(404, f"no E2B API route {method} {path} (corral {__version__})")


def _validation_message(e: ValidationError) -> str:
    first = e.errors()[0]
    names = {"template": "templateID", "envs": "envVars", "internet": "allow_internet_access",
             "allow_out": "network.allowOut", "deny_out": "network.denyOut"}
    where = ".".join(names.get(str(x), str(x)) for x in first.get("loc", ()))
    return f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
