"""Port URLs: HTTP and WebSocket traffic to servers listening inside sandboxes.

Two spellings of the same thing, both on the API's own listener:

- host-based: every request whose Host is ``<port>-<sandbox id>.<domain>`` (browsers resolve
  ``*.localhost`` to loopback, so ``http://8000-<id>.localhost:49982/`` works out of the box);
- path-based: ``/v1/sandboxes/{id}/ports/{port}/<path>`` reaches ``/<path>`` inside.

Neither takes the API key (a browser cannot send it, and the key must never reach a sandbox).
A sandbox created with ``public_ports=false`` asks for its traffic token instead: the
``X-Corral-Traffic-Token`` header, or once the ``traffic_token`` query parameter, after which a
cookie carries it. Nothing listening on the port answers 502 ``port_closed`` naming the port.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx

from .. import errors
from ..manager import Manager
from .render import error_response

HOST = re.compile(r"(?P<port>\d{1,5})-(?P<sandbox_id>[a-z0-9]+)\.(?P<domain>[^:]+)(?::\d+)?")
PATH = re.compile(r"/v1/sandboxes/(?P<sandbox_id>[a-z0-9]+)/ports/(?P<port>\d{1,5})(?P<rest>/.*)?")
TOKEN_HEADER = "x-corral-traffic-token"
E2B_PORTS = frozenset({49983, 49999})  # by host name, envd and the code interpreter of the e2b SDKs (compat/e2b)
TOKEN_QUERY = "traffic_token"
TOKEN_COOKIE = "corral_traffic_token"
E2B_TOKEN_HEADER = "e2b-traffic-access-token"  # what E2B's SDKs and docs send (compat/e2b hands it out)
# Not forwarded either way: hop-by-hop headers, and corral's own credentials.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "host",
})  # fmt: skip
PRIVATE = frozenset({"x-api-key", TOKEN_HEADER, E2B_TOKEN_HEADER, "x-access-token", "e2b-sandbox-id", "e2b-sandbox-port"})
Closed = Callable[[Any], Awaitable[None]]


@dataclass(frozen=True)
class Target:
    sandbox_id: str
    port: int
    path: str  # inside the sandbox
    cookie_path: str  # where the token cookie applies


def route(scope: dict[str, Any], domain: str) -> Target | None:
    """The sandbox port a request is for, if it is one (by its Host, then by its path)."""
    host = _header(scope, b"host")
    if host and (m := HOST.fullmatch(host)) and m["domain"] == domain and int(m["port"]) not in E2B_PORTS:
        return Target(m["sandbox_id"], int(m["port"]), scope["path"], "/")
    if m := PATH.fullmatch(scope["path"]):
        prefix = f"/v1/sandboxes/{m['sandbox_id']}/ports/{m['port']}/"
        return Target(m["sandbox_id"], int(m["port"]), m["rest"] or "/", prefix)
    return None


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for k, v in scope["headers"]:
        if k.lower() == name:
            return str(v.decode("latin-1"))
    return None


def _token(scope: dict[str, Any]) -> tuple[str | None, bool]:
    """The traffic token the request carries, and whether it came in the query (set a cookie)."""
    if header := _header(scope, TOKEN_HEADER.encode()) or _header(scope, E2B_TOKEN_HEADER.encode()):
        return header, False
    query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
    if TOKEN_QUERY in query:
        return query[TOKEN_QUERY], True
    cookie = SimpleCookie(_header(scope, b"cookie") or "")
    return (cookie[TOKEN_COOKIE].value if TOKEN_COOKIE in cookie else None), False


def _forward_query(scope: dict[str, Any]) -> str:
    pairs = [(k, v) for k, v in parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
             if k != TOKEN_QUERY]  # fmt: skip
    return urlencode(pairs)


def _request_headers(scope: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for k, v in scope["headers"]:
        name = k.decode("latin-1").lower()
        if name in HOP_BY_HOP or name in PRIVATE or name.startswith("sec-websocket-"):
            continue
        value = v.decode("latin-1")
        if name == "cookie":  # corral's cookie stays out of the sandbox
            value = "; ".join(p for p in value.split("; ") if not p.startswith(TOKEN_COOKIE + "="))
            if not value:
                continue
        out.append((name, value))
    client = scope.get("client") or ("", 0)
    out += [("x-forwarded-for", str(client[0])), ("x-forwarded-proto", scope.get("scheme", "http"))]
    if host := _header(scope, b"host"):
        out.append(("x-forwarded-host", host))
    return out


class PortProxy:
    def __init__(self) -> None:
        # No read timeout: a long poll or a slow stream is the sandbox's business.
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=5.0), follow_redirects=False, trust_env=False)

    async def close(self) -> None:
        await self.http.aclose()

    async def __call__(
        self, m: Manager, target: Target, scope: dict[str, Any], receive: Any, send: Any, closed: Closed | None = None
    ) -> None:
        """Proxy one request or WebSocket. ``closed`` answers for a port nothing listens on
        (the E2B compat layer answers in E2B's shape); by default a 502 ``port_closed``."""
        token, from_query = _token(scope)
        try:
            address, port = m.port_target(target.sandbox_id, target.port, token)
        except errors.CorralError as err:
            if scope["type"] == "websocket":
                return await send({"type": "websocket.close", "code": 4401 if err.status == 401 else 4404,
                                   "reason": err.message[:120]})  # fmt: skip
            return await error_response(err)(scope, receive, send)
        set_cookie = token if from_query else None
        if scope["type"] == "websocket":
            return await self._websocket(address, port, target, scope, receive, send)
        return await self._http(address, port, target, scope, receive, send, set_cookie, closed)

    async def _http(
        self, address: str, port: int, target: Target, scope: dict[str, Any], receive: Any, send: Any,
        set_cookie: str | None, closed: Closed | None = None,
    ) -> None:  # fmt: skip
        if target.cookie_path != "/" and not scope["path"].endswith("/") and target.path == "/":
            # /v1/sandboxes/{id}/ports/8000 -> .../8000/ so the page's relative links resolve inside.
            location = scope["path"] + "/" + (f"?{scope['query_string'].decode('latin-1')}" if scope.get("query_string") else "")
            await send({"type": "http.response.start", "status": 307, "headers": [(b"location", location.encode())]})
            return await send({"type": "http.response.body", "body": b""})
        query = _forward_query(scope)
        url = f"http://{address}:{port}{target.path}" + (f"?{query}" if query else "")

        async def body() -> AsyncIterator[bytes]:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                if chunk := message.get("body", b""):
                    yield chunk
                if not message.get("more_body"):
                    return

        has_body = any(k.lower() in (b"content-length", b"transfer-encoding") for k, _ in scope["headers"])
        request = self.http.build_request(
            scope["method"], url, headers=_request_headers(scope), content=body() if has_body else None
        )
        try:
            upstream = await self.http.send(request, stream=True)
        except httpx.ConnectError:
            if closed is not None:
                return await closed(send)
            err = errors.PortClosedError(f"nothing is listening on port {port} in sandbox {target.sandbox_id}")
            return await error_response(err)(scope, receive, send)
        except httpx.HTTPError as e:
            err = errors.PortClosedError(f"port {port} of sandbox {target.sandbox_id} did not answer: {e}")
            return await error_response(err)(scope, receive, send)
        try:
            headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in upstream.headers.multi_items()
                       if k.lower() not in HOP_BY_HOP]  # fmt: skip
            if set_cookie:
                cookie = f"{TOKEN_COOKIE}={set_cookie}; Path={target.cookie_path}; HttpOnly; SameSite=Lax"
                headers.append((b"set-cookie", cookie.encode()))
            await send({"type": "http.response.start", "status": upstream.status_code, "headers": headers})
            async for chunk in upstream.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        except httpx.HTTPError:
            pass  # the sandbox's server broke off: the client sees a short body
        finally:
            await upstream.aclose()

    async def _websocket(
        self, address: str, port: int, target: Target, scope: dict[str, Any], receive: Any, send: Any
    ) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidHandshake

        if (await receive())["type"] != "websocket.connect":
            return
        query = _forward_query(scope)
        uri = f"ws://{address}:{port}{target.path}" + (f"?{query}" if query else "")
        subprotocols = scope.get("subprotocols") or None
        headers = [(k, v) for k, v in _request_headers(scope) if k not in ("origin",)]
        try:
            upstream = await connect(uri, additional_headers=headers, subprotocols=subprotocols, max_size=None,
                                     open_timeout=5, proxy=None)  # fmt: skip
        except (OSError, InvalidHandshake, TimeoutError) as e:
            reason = f"port_closed: port {port} of sandbox {target.sandbox_id}: {e}"
            return await send({"type": "websocket.close", "code": 1011, "reason": reason[:120]})
        await send({"type": "websocket.accept", "subprotocol": upstream.subprotocol})

        async def client_to_sandbox() -> None:
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    return
                data = message.get("text") if message.get("text") is not None else message.get("bytes")
                if data is not None:
                    await upstream.send(data)

        async def sandbox_to_client() -> None:
            with contextlib.suppress(ConnectionClosed):
                async for data in upstream:
                    key = "text" if isinstance(data, str) else "bytes"
                    await send({"type": "websocket.send", key: data})
            code = upstream.close_code or 1000
            with contextlib.suppress(Exception):
                await send({"type": "websocket.close", "code": code if code != 1006 else 1011})

        tasks = [asyncio.ensure_future(client_to_sandbox()), asyncio.ensure_future(sandbox_to_client())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await upstream.close()
