"""Shared helpers of the route modules."""

from __future__ import annotations

from fastapi import Request

from ...manager import Manager


async def manager(request: Request) -> Manager:
    # async on purpose: FastAPI runs plain-def dependencies in a thread pool (a hop per request).
    m: Manager = request.app.state.manager
    return m
