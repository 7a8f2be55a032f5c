"""Shared helpers of the route modules."""

from __future__ import annotations

from fastapi import Request

from ...manager import Manager


def manager(request: Request) -> Manager:
    m: Manager = request.app.state.manager
    return m
