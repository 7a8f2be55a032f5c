"""The manager: sandbox lifecycle, timeouts, warm pool."""

from .service import Manager
from .states import State

__all__ = ["Manager", "State"]
