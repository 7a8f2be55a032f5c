"""Turning HTTP failures into the shared error tree (used by both the async core and its twin)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from corral.errors import CorralError, TimeoutError_, UnavailableError, error_from_body


def error_from_response(status: int, content: bytes) -> CorralError:
    """The error a non-2xx answer stands for: its ``{code, message}`` body mapped back."""
    try:
        body = json.loads(content) if content else {}
    except ValueError:
        body = content.decode("utf-8", "replace")
    return error_from_body(status, body)


@contextmanager
def transport_errors(api_url: str) -> Iterator[None]:
    """Re-raise connection failures and timeouts as corral errors that say where and what."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise TimeoutError_(f"request to corral at {api_url} timed out ({type(exc).__name__})") from exc
    except httpx.TransportError as exc:
        raise UnavailableError(f"cannot reach corral at {api_url}: {exc or type(exc).__name__}") from exc
