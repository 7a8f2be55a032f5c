"""The Connect protocol with the JSON codec, as the e2b SDKs speak it to envd.

Unary: the request body is one JSON message, the answer one JSON message (200) or an error
``{"code": "<connect code>", "message"}`` with the code's HTTP status. Streams: bodies are
envelopes, 1 flag byte + 4-byte big-endian length + JSON; a server stream answers 200 with data
envelopes and one end-of-stream envelope (flag 0x02) holding ``{}`` or ``{"error": {...}}``.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ... import errors
from .asgi import Scope, body_chunks, json_object, read_body

FLAG_COMPRESSED = 0x01
FLAG_END_STREAM = 0x02
MAX_MESSAGE = 20 * 1024 * 1024

# Connect error code -> HTTP status of a unary error answer.
STATUS = {
    "canceled": 499, "unknown": 500, "invalid_argument": 400, "deadline_exceeded": 504, "not_found": 404,
    "already_exists": 409, "permission_denied": 403, "resource_exhausted": 429, "failed_precondition": 400,
    "aborted": 409, "out_of_range": 400, "unimplemented": 501, "internal": 500, "unavailable": 503,
    "data_loss": 500, "unauthenticated": 401,
}


class ConnectError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message

    def body(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


def from_corral(err: errors.CorralError) -> ConnectError:
    """The Connect error the e2b SDK maps to the exception matching corral's error."""
    if isinstance(err, errors.SandboxNotRunningError | errors.SandboxNotFoundError):
        # "was not found" is what the SDK reads as SandboxNotRunningException.
        return ConnectError("unavailable", f"The sandbox was not found: {err.message}")
    code = next((c for cls, c in _CODES if isinstance(err, cls)), "internal")
    return ConnectError(code, err.message)


_CODES: list[tuple[type[errors.CorralError], str]] = [
    (errors.AuthenticationError, "unauthenticated"),
    (errors.PayloadTooLargeError, "resource_exhausted"),
    (errors.InvalidRequestError, "invalid_argument"),
    (errors.NotADirectoryError_, "invalid_argument"),
    (errors.IsADirectoryError_, "invalid_argument"),
    (errors.NotFoundError, "not_found"),
    (errors.FileExistsError_, "already_exists"),
    (errors.ConflictError, "failed_precondition"),
    (errors.PermissionDeniedError, "permission_denied"),
    (errors.LimitExceededError, "resource_exhausted"),
    (errors.UnavailableError, "unavailable"),
    (errors.TimeoutError_, "deadline_exceeded"),
]


def _as_connect(err: BaseException) -> ConnectError:
    if isinstance(err, ConnectError):
        return err
    if isinstance(err, errors.CorralError):
        return from_corral(err)
    return ConnectError("internal", f"internal error: {type(err).__name__}")


def envelope(message: dict[str, Any], flags: int = 0) -> bytes:
    data = json.dumps(message, separators=(",", ":")).encode()
    return struct.pack(">BI", flags, len(data)) + data


async def envelopes(receive: Any) -> AsyncIterator[dict[str, Any]]:
    """The messages of an enveloped request body, as they arrive."""
    buf = bytearray()
    async for chunk in body_chunks(receive):
        buf += chunk
        while len(buf) >= 5:
            flags, length = struct.unpack(">BI", buf[:5])
            if length > MAX_MESSAGE:
                raise ConnectError("resource_exhausted", f"message over {MAX_MESSAGE} bytes")
            if len(buf) < 5 + length:
                break
            payload, buf = bytes(buf[5 : 5 + length]), buf[5 + length :]
            if flags & FLAG_COMPRESSED:
                raise ConnectError("unimplemented", "compressed messages are not supported (use identity)")
            if flags & FLAG_END_STREAM:
                return
            yield _message(payload)
    if buf:
        raise ConnectError("invalid_argument", "the request ended in the middle of a message")


def _message(payload: bytes) -> dict[str, Any]:
    try:
        return json_object(payload)
    except errors.CorralError as e:
        raise ConnectError("invalid_argument", e.message) from None


@dataclass
class Call:
    """What a handler gets besides its message: the sandbox, the user, the request's headers."""

    sandbox_id: str
    user: str
    headers: dict[str, str]

    @property
    def timeout(self) -> float | None:
        """The client's deadline (``connect-timeout-ms``) in seconds, if it sent one."""
        raw = self.headers.get("connect-timeout-ms", "")
        return int(raw) / 1000 if raw.isdigit() and int(raw) > 0 else None

    @property
    def keepalive(self) -> float:
        raw = self.headers.get("keepalive-ping-interval", "")
        return float(raw) if raw.isdigit() and int(raw) > 0 else 90.0


Unary = Callable[[Call, dict[str, Any]], Awaitable[dict[str, Any]]]
ServerStream = Callable[[Call, dict[str, Any]], Awaitable[AsyncIterator[dict[str, Any]]]]
ClientStream = Callable[[Call, AsyncIterator[dict[str, Any]]], Awaitable[dict[str, Any]]]


@dataclass
class Method:
    kind: str  # "unary", "server_stream" or "client_stream"
    handler: Any


async def serve(method: Method, call: Call, scope: Scope, receive: Any, send: Any) -> None:
    if method.kind == "unary":
        await _unary(method.handler, call, receive, send)
    elif method.kind == "server_stream":
        await _server_stream(method.handler, call, receive, send)
    else:
        await _client_stream(method.handler, call, receive, send)


async def _unary(handler: Unary, call: Call, receive: Any, send: Any) -> None:
    try:
        try:
            message = json_object(await read_body(receive))
        except errors.CorralError as e:
            raise ConnectError("invalid_argument", e.message) from None
        answer = await handler(call, message)
        status, body = 200, answer
    except Exception as e:
        err = _as_connect(e)
        status, body = STATUS.get(err.code, 500), err.body()
    data = json.dumps(body, separators=(",", ":")).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


async def _start_stream(send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/connect+json")]})


async def _end_stream(send: Any, err: ConnectError | None) -> None:
    trailer = {} if err is None else {"error": err.body()}
    await send({"type": "http.response.body", "body": envelope(trailer, FLAG_END_STREAM), "more_body": False})


async def _server_stream(handler: ServerStream, call: Call, receive: Any, send: Any) -> None:
    messages: AsyncIterator[dict[str, Any]] | None = None
    try:
        # The whole request first: a client that sees the answer start may stop sending its body.
        try:
            request = [m async for m in envelopes(receive)]
        finally:
            await _start_stream(send)
        if len(request) != 1:
            raise ConnectError("invalid_argument", "a server-streaming call takes exactly one message")
        messages = await handler(call, request[0])
        await _pump(messages, receive, send)
    except Exception as e:
        await _end_stream(send, _as_connect(e))
        return
    finally:
        aclose = getattr(messages, "aclose", None)
        if aclose is not None:
            await aclose()
    await _end_stream(send, None)


async def _pump(messages: AsyncIterator[dict[str, Any]], receive: Any, send: Any) -> None:
    """Send the messages until they end; stop early (CancelledError inside) if the client goes away."""

    async def forward() -> None:
        async for message in messages:
            await send({"type": "http.response.body", "body": envelope(message), "more_body": True})

    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    sender = asyncio.ensure_future(forward())
    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({sender, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not sender.done():
            sender.cancel()
        # Both done before the caller closes the message generator (which the sender iterated).
        await asyncio.gather(watcher, sender, return_exceptions=True)
    if sender.cancelled():
        raise ConnectError("canceled", "the client went away")
    sender.result()


async def _client_stream(handler: ClientStream, call: Call, receive: Any, send: Any) -> None:
    try:
        answer = await handler(call, envelopes(receive))
    except Exception as e:
        await _start_stream(send)
        await _end_stream(send, _as_connect(e))
        return
    await _start_stream(send)
    await send({"type": "http.response.body", "body": envelope(answer), "more_body": True})
    await _end_stream(send, None)


async def with_keepalives(
    messages: AsyncIterator[dict[str, Any]], every: float, keepalive: dict[str, Any]
) -> AsyncIterator[dict[str, Any]]:
    """The messages, and ``keepalive`` whenever nothing came for ``every`` seconds."""
    iterator = messages.__aiter__()
    pending: asyncio.Future[dict[str, Any]] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(iterator.__anext__())
            done, _ = await asyncio.wait({pending}, timeout=every)
            if not done:
                yield keepalive
                continue
            try:
                message = pending.result()
            except StopAsyncIteration:
                return
            finally:
                pending = None
            yield message
    finally:
        if pending is not None:
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()
