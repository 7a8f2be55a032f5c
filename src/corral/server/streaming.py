"""Rendering event streams (commands, code cells) as NDJSON or Server-Sent Events, with keep-alives."""

from __future__ import annotations

import asyncio
import codecs
import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

KEEPALIVE_SECONDS = 10.0


async def with_keepalives(events: AsyncIterator[dict[str, Any]], every: float = KEEPALIVE_SECONDS) -> AsyncIterator[dict[str, Any]]:
    """Yield the events, and a keepalive event whenever nothing came for ``every`` seconds."""
    iterator = events.__aiter__()
    pending: asyncio.Task[Any] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(iterator.__anext__())
            done, _ = await asyncio.wait({pending}, timeout=every)
            if not done:
                yield {"type": "keepalive"}
                continue
            try:
                event = pending.result()
            except StopAsyncIteration:
                return
            finally:
                pending = None
            yield event
    finally:
        if pending is not None:
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()


async def decoded(events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    """Turn stdout/stderr bytes into text, incrementally (a character split across chunks stays whole)."""
    decoders = {
        "stdout": codecs.getincrementaldecoder("utf-8")("replace"),
        "stderr": codecs.getincrementaldecoder("utf-8")("replace"),
    }
    async for event in events:
        kind = event.get("type")
        if kind in decoders:
            text = decoders[kind].decode(event["data"])
            if text:
                yield {"type": kind, "data": text}
            continue
        if kind == "end":
            for name, dec in decoders.items():
                tail = dec.decode(b"", final=True)
                if tail:
                    yield {"type": name, "data": tail}
        yield event


async def ndjson(events: AsyncIterator[dict[str, Any]], decode: bool = True) -> AsyncGenerator[bytes, None]:
    """One JSON object a line; ``decode`` turns command output bytes into text first."""
    async for event in with_keepalives(decoded(events) if decode else events):
        yield json.dumps(event, separators=(",", ":")).encode() + b"\n"


async def sse(events: AsyncIterator[dict[str, Any]], decode: bool = True) -> AsyncGenerator[bytes, None]:
    async for event in with_keepalives(decoded(events) if decode else events):
        if event["type"] == "keepalive":
            yield b": keepalive\n\n"
        else:
            yield b"event: " + event["type"].encode() + b"\ndata: " + json.dumps(event).encode() + b"\n\n"
