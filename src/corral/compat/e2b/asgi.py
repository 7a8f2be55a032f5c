"""Small plain-ASGI helpers shared by the E2B compat modules: reading bodies, JSON answers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from ... import errors
from ...server.fastpath import read_body as read_body  # one body reader for the fast path and E2B

Scope = dict[str, Any]


def headers_of(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


async def body_chunks(receive: Any) -> AsyncIterator[bytes]:
    """The request body as it arrives."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise errors.InvalidRequestError("the client went away in the middle of its request")
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body"):
            return


def json_object(body: bytes) -> dict[str, Any]:
    """A JSON object from a request body (an empty body is ``{}``)."""
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except ValueError:
        raise errors.InvalidRequestError("the request body is not valid JSON") from None
    if not isinstance(value, dict):
        raise errors.InvalidRequestError("the request body must be a JSON object")
    return value


async def send_json(send: Any, status: int, body: Any, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    data = json.dumps(body, separators=(",", ":")).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *(headers or []),
    ]})
    await send({"type": "http.response.body", "body": data})


async def send_empty(send: Any, status: int = 204) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})


def opt_str(body: dict[str, Any], key: str, default: str | None = None) -> str | None:
    value = body.get(key, default)
    if value is not None and not isinstance(value, str):
        raise errors.InvalidRequestError(f"{key} must be a string")
    return value


def opt_int(body: dict[str, Any], key: str, default: int | None = None) -> int | None:
    value = body.get(key, default)
    if isinstance(value, str) and value.lstrip("-").isdigit():  # proto3 JSON: 64-bit ints as strings
        value = int(value)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise errors.InvalidRequestError(f"{key} must be an integer")
    return value


def str_map(body: dict[str, Any], key: str) -> dict[str, str]:
    value = body.get(key) or {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise errors.InvalidRequestError(f"{key} must be an object of strings")
    return value
