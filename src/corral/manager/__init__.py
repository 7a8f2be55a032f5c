"""The manager: sandbox lifecycle, timeouts, warm pool."""

from ..store import SandboxRecord
from .service import Manager, traffic_token
from .states import State

__all__ = ["Manager", "SandboxRecord", "State", "traffic_token"]
