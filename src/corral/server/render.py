"""Rendering errors as `{code, message}` responses (shared by the FastAPI routes and the fast path)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fastapi.responses import JSONResponse

from .. import errors


def error_response(err: errors.CorralError) -> JSONResponse:
    return JSONResponse(err.to_body(), status_code=err.status)


def invalid_request(details: Iterable[Any]) -> errors.InvalidRequestError:
    """One readable message out of pydantic's validation errors (the first five)."""
    parts = []
    for e in list(details)[:5]:
        where = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
        parts.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
    return errors.InvalidRequestError("; ".join(parts) or "invalid request")
