"""The manager: sandbox lifecycle, timeouts, warm pool."""

from ..store import SandboxRecord
from .service import Manager
from .states import State

__all__ = ["Manager", "SandboxRecord", "State"]
