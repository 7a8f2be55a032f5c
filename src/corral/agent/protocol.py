"""The agent wire protocol, host side (standard library only).

A frame is ``kind (1 byte) + length (4 bytes, big endian) + payload``; see the "Agent
protocol" section of ARCHITECTURE.md. The agent (``daemon/wire.py``) carries its own copy of
these constants and of the framing, because the daemon runs in sandboxes on its own (it imports
nothing from corral); the tests check that both sides agree.
"""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

VERSION = "1"

KIND_JSON = b"J"  # one JSON object (UTF-8)
KIND_DATA = b"D"  # raw file bytes
KIND_STDOUT = b"1"  # process stdout bytes
KIND_STDERR = b"2"  # process stderr bytes
KIND_END = b"E"  # end of a data body (empty)
KINDS = frozenset({KIND_JSON, KIND_DATA, KIND_STDOUT, KIND_STDERR, KIND_END})

HEADER_SIZE = 5
MAX_DATA_FRAME = 64 * 1024  # largest D/1/2 payload either side sends
MAX_JSON_FRAME = 1 << 20  # the agent rejects larger request frames
MAX_AGENT_DATA_IN = 16 << 20  # the agent rejects larger incoming D frames

DEFAULT_SOCKET = "/run/corral/agent.sock"


class ProtocolError(Exception):
    """The peer broke the framing (or the connection ended in the middle of a frame)."""


class ConnectionClosed(ProtocolError):
    """The connection ended cleanly, at a frame boundary, where a frame was expected."""


def header(kind: bytes, length: int) -> bytes:
    return kind + length.to_bytes(4, "big")


def encode_frame(kind: bytes, payload: bytes | bytearray | memoryview = b"") -> bytes:
    if len(kind) != 1:
        raise ValueError(f"frame kind must be one byte, got {kind!r}")
    return kind + len(payload).to_bytes(4, "big") + bytes(payload)


def encode_json(obj: dict[str, Any]) -> bytes:
    """A J frame (compact, ASCII-only JSON: lone surrogates from file names survive)."""
    return encode_frame(KIND_JSON, json.dumps(obj, separators=(",", ":")).encode("ascii"))


def decode_json(payload: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(payload)
    except ValueError as e:
        raise ProtocolError(f"malformed JSON frame: {e}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("a J frame must hold a JSON object")
    return obj


def _parse_header(head: bytes, max_payload: int | None) -> tuple[bytes, int]:
    kind, length = head[:1], int.from_bytes(head[1:5], "big")
    if kind not in KINDS:
        raise ProtocolError(f"unknown frame kind {kind!r}")
    if max_payload is not None and length > max_payload:
        raise ProtocolError(f"frame of {length} bytes is larger than {max_payload}")
    return kind, length


async def read_frame(reader: asyncio.StreamReader, max_payload: int | None = None) -> tuple[bytes, bytes]:
    """Read one frame: ``(kind, payload)``.

    Raises ConnectionClosed at a clean end of stream, ProtocolError on EOF mid-frame or bad framing.
    """
    try:
        head = await reader.readexactly(HEADER_SIZE)
    except asyncio.IncompleteReadError as e:
        if not e.partial:
            raise ConnectionClosed("connection closed by the agent") from None
        raise ProtocolError("connection closed in the middle of a frame header") from None
    kind, length = _parse_header(head, max_payload)
    if not length:
        return kind, b""
    try:
        payload = await reader.readexactly(length)
    except asyncio.IncompleteReadError as e:
        raise ProtocolError(
            f"connection closed in the middle of a frame ({len(e.partial)} of {length} bytes)"
        ) from None
    return kind, payload


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def recv_frame(sock: socket.socket, max_payload: int | None = None) -> tuple[bytes, bytes]:
    """Blocking twin of :func:`read_frame` for plain sockets."""
    head = _recv_exactly(sock, HEADER_SIZE)
    if not head:
        raise ConnectionClosed("connection closed by the agent")
    if len(head) < HEADER_SIZE:
        raise ProtocolError("connection closed in the middle of a frame header")
    kind, length = _parse_header(head, max_payload)
    payload = _recv_exactly(sock, length)
    if len(payload) < length:
        raise ProtocolError(f"connection closed in the middle of a frame ({len(payload)} of {length} bytes)")
    return kind, payload


def send_frame(sock: socket.socket, kind: bytes, payload: bytes | bytearray | memoryview = b"") -> None:
    sock.sendall(encode_frame(kind, payload))


def send_json(sock: socket.socket, obj: dict[str, Any]) -> None:
    sock.sendall(encode_json(obj))
