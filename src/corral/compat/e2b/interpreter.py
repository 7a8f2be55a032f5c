"""The code-interpreter server of E2B sandboxes (port 49999): ``/execute`` and ``/contexts``.

Not served yet: corral's code interpreter (Jupyter kernels in the ``code-interpreter`` template,
reached through the agent) is being built separately, and its in-sandbox server will emit the
E2B ``/execute`` NDJSON lines. Until it is wired in here, every call answers 501 with a JSON
body saying so. The routing layer has already checked that the sandbox runs.
"""

from __future__ import annotations

from typing import Any

from ...manager import Manager
from .asgi import Scope, send_json


async def serve(manager: Manager, sandbox_id: str, scope: Scope, receive: Any, send: Any) -> None:
    """Answer one code-interpreter request for a running sandbox."""
    message = (
        "the code interpreter (port 49999: /execute, /contexts) is not available in this corral "
        f"server yet; {scope['method']} {scope['path']} was not run"
    )
    await send_json(send, 501, {"code": 501, "message": message})
