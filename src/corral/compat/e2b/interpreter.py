"""The code-interpreter server of E2B sandboxes (port 49999): ``/execute`` and ``/contexts``.

Served by corral's own code interpreter (``Manager.run_code`` and the code-context actions:
Jupyter kernels in the ``code-interpreter`` template, reached through the agent), whose
events already are the lines of E2B's ``/execute`` stream; this module only renders them the
way E2B's server does (plain-text errors, keepalives every 5 s, the context ``{id, language,
cwd}`` shapes). The e2b SDKs send ``X-Access-Token`` on ``/execute`` only (never on
``/contexts``), so only ``/execute`` checks it. A client that goes away interrupts its cell.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import AsyncGenerator
from typing import Any

from pydantic import ValidationError

from ... import errors
from ...manager import Manager
from ...schema import RunCode
from ...server.fastpath import stream_until_gone
from ...server.streaming import with_keepalives
from .asgi import Scope, headers_of, json_object, read_body, send_json
from .envd import access_token

KEEPALIVE_SECONDS = 5.0  # as E2B's server
CONTEXT_PATH = re.compile(r"/contexts/(?P<id>[^/]+)(?P<restart>/restart)?")
ALIASES = {"js": "javascript", "ts": "typescript"}


def has_access_token(manager: Manager, sandbox_id: str, scope: Scope) -> bool:
    """Whether the request carries the sandbox's access token (``X-Access-Token``)."""
    given = headers_of(scope).get("x-access-token", "")
    # SECURITY: constant-time comparison of the sandbox's token.
    return hmac.compare_digest(given.encode(), access_token(manager, sandbox_id).encode())


async def send_text(send: Any, status: int, text: str) -> None:
    data = text.encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(data)).encode())]})  # fmt: skip
    await send({"type": "http.response.body", "body": data})


def _language(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise errors.InvalidRequestError("language must be a string")
    lang = value.strip().lower()
    return ALIASES.get(lang, lang)


async def serve(manager: Manager, sandbox_id: str, scope: Scope, receive: Any, send: Any) -> None:
    """Answer one code-interpreter request for a running sandbox."""
    method, path = scope["method"], scope["path"].rstrip("/") or "/"
    try:
        if path == "/health":
            return await send_text(send, 200, "OK")
        if path == "/execute" and method == "POST":
            if not has_access_token(manager, sandbox_id, scope):
                return await send_json(send, 401, {"code": 401, "message": "invalid or missing X-Access-Token"})
            return await _execute(manager, sandbox_id, scope, receive, send)
        if path == "/contexts" and method == "GET":
            listed = await manager.code_contexts(sandbox_id)
            return await send_json(send, 200, listed["contexts"])
        if path == "/contexts" and method == "POST":
            body = json_object(await read_body(receive))
            cwd = body.get("cwd")
            if cwd is not None and not isinstance(cwd, str):
                raise errors.InvalidRequestError("cwd must be a string")
            ctx = await manager.create_code_context(sandbox_id, _language(body.get("language")), cwd)
            return await send_json(send, 200, ctx)
        if m := CONTEXT_PATH.fullmatch(path):
            if m["restart"] and method == "POST":
                await manager.restart_code_context(sandbox_id, m["id"])
                return await send_json(send, 200, {"ok": True})
            if not m["restart"] and method == "DELETE":
                await manager.remove_code_context(sandbox_id, m["id"])
                return await send_json(send, 200, {"ok": True})
        return await send_text(send, 404, "Not Found")
    except errors.ContextNotFoundError as e:
        context_id = e.message.split("'")[1] if e.message.count("'") >= 2 else ""
        return await send_text(send, 404, f"Context {context_id} not found")
    except errors.NotSupportedError:
        # What E2B's proxy says when nothing serves the port (a template without kernels).
        message = "The sandbox is running but port is not open: its template has no code interpreter (use code-interpreter)"
        return await send_json(send, 502, {"code": 502, "message": message, "sandboxId": sandbox_id, "port": 49999})
    except errors.CorralError as e:
        return await send_text(send, e.status if e.status < 500 else 500, e.message)


async def _execute(manager: Manager, sandbox_id: str, scope: Scope, receive: Any, send: Any) -> None:
    body = json_object(await read_body(receive))
    if body.get("context_id") is not None and body.get("language") is not None:
        return await send_text(send, 400, "Only one of context_id or language can be provided")
    try:
        req = RunCode.model_validate({"code": body.get("code"), "language": _language(body.get("language")),
                                      "context_id": body.get("context_id"), "envs": body.get("env_vars") or {}})  # fmt: skip
    except ValidationError as e:
        return await send_text(send, 400, f"invalid request: {e.errors()[0].get('msg', 'bad value')}")
    events = await manager.run_code(sandbox_id, req)

    async def lines() -> AsyncGenerator[bytes, None]:
        async for event in with_keepalives(events, every=KEEPALIVE_SECONDS):
            if event.get("type") != "accepted":  # corral's own first line
                yield json.dumps(event, separators=(",", ":")).encode() + b"\n"

    # The SDK's own timeout closes the connection: the cell is interrupted (its context survives).
    await stream_until_gone(lines(), b"application/x-ndjson", receive, send)
