"""The fast path for the hottest calls: running a command and running a cell.

Agents run these back to back, and FastAPI's request pipeline costs ~0.5 ms of a ~5 ms round
trip, so the Guard middleware hands them (after authentication) to this plain ASGI adapter: the
same request model, manager action and stream rendering as their FastAPI routes in
``routes/commands.py`` and ``routes/code.py``, which stay as the OpenAPI declarations.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from .. import errors
from ..manager import Manager
from ..schema import RunCode, RunCommand
from .render import error_response, invalid_request
from .streaming import ndjson, sse

MAX_BODY = 20 * 1024 * 1024


@dataclass(frozen=True)
class FastRoute:
    path: re.Pattern[str]
    model: type[BaseModel]
    action: Callable[[Manager, str, Any], Awaitable[AsyncIterator[dict[str, Any]]]]
    decode: bool  # command output arrives as bytes and is decoded; cell events are text already


ROUTES = (
    FastRoute(re.compile(r"/v1/sandboxes/(?P<sandbox_id>[^/]+)/commands"), RunCommand, Manager.run_command, True),
    FastRoute(re.compile(r"/v1/sandboxes/(?P<sandbox_id>[^/]+)/code"), RunCode, Manager.run_code, False),
)


def match(scope: dict[str, Any]) -> tuple[FastRoute, str] | None:
    if scope["method"] != "POST":
        return None
    for route in ROUTES:
        if m := route.path.fullmatch(scope["path"]):
            return route, m["sandbox_id"]
    return None


async def serve(route: FastRoute, m: Manager, sandbox_id: str, scope: Any, receive: Any, send: Any) -> None:
    headers = {k.lower(): v for k, v in scope["headers"]}
    try:
        body = await read_body(receive)
        try:
            req = route.model.model_validate_json(body or b"{}")
        except ValidationError as e:
            raise invalid_request(e.errors()) from None
        events = await route.action(m, sandbox_id, req)
    except errors.CorralError as err:
        return await error_response(err)(scope, receive, send)
    if b"text/event-stream" in headers.get(b"accept", b""):
        chunks, media = sse(events, route.decode), b"text/event-stream"
    else:
        chunks, media = ndjson(events, route.decode), b"application/x-ndjson"
    await stream_until_gone(chunks, media, receive, send)


async def stream_until_gone(chunks: AsyncGenerator[bytes, None], media: bytes, receive: Any, send: Any) -> None:
    """Send a 200 streamed answer, and let go of ``chunks`` at once if the client disconnects."""

    async def respond() -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", media)]})
        async for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def client_gone() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    # A client that goes away lets go of the agent stream at once (a command goes on; a cell
    # is interrupted), even while nothing is being sent.
    tasks = [asyncio.ensure_future(respond()), asyncio.ensure_future(client_gone())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if tasks[0] in done:
            tasks[0].result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await chunks.aclose()


async def read_body(receive: Any, limit: int = MAX_BODY) -> bytes:
    """The whole request body (chunked or not), at most ``limit`` bytes."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise errors.InvalidRequestError("the client went away before sending its request")
        body += message.get("body", b"")
        if len(body) > limit:
            raise errors.PayloadTooLargeError(f"request body over {limit} bytes")
        if not message.get("more_body"):
            return bytes(body)
