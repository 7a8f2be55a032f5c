"""The HTTP layer's stream rendering: keep-alives during silences, UTF-8 split across chunks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from corral.server.streaming import decoded, with_keepalives


async def _slow_events() -> AsyncIterator[dict[str, Any]]:
    yield {"type": "start", "pid": 7}
    await asyncio.sleep(0.35)
    yield {"type": "stdout", "data": b"late\n"}
    yield {"type": "end", "exit_code": 0, "error": None}


def test_keepalives_fill_long_silences() -> None:
    async def collect() -> list[dict[str, Any]]:
        return [e async for e in with_keepalives(_slow_events(), every=0.1)]

    events = asyncio.run(collect())
    kinds = [e["type"] for e in events]
    assert kinds[0] == "start" and kinds[-2:] == ["stdout", "end"]
    assert 2 <= kinds.count("keepalive") <= 4, kinds


def test_utf8_split_across_chunks_is_kept_whole() -> None:
    snowman = "☃".encode()

    async def events() -> AsyncIterator[dict[str, Any]]:
        yield {"type": "start", "pid": 1}
        yield {"type": "stdout", "data": b"a" + snowman[:1]}
        yield {"type": "stdout", "data": snowman[1:] + b"b"}
        yield {"type": "stderr", "data": b"\xff"}  # not UTF-8: replaced, never an error
        yield {"type": "end", "exit_code": 0, "error": None}

    async def collect() -> list[dict[str, Any]]:
        return [e async for e in decoded(events())]

    out = asyncio.run(collect())
    assert "".join(e["data"] for e in out if e["type"] == "stdout") == "a☃b"
    assert [e["data"] for e in out if e["type"] == "stderr"] == ["\ufffd"]
