"""The code-interpreter server of E2B sandboxes (port 49999): ``/execute`` and ``/contexts``.

Not served yet: corral's code interpreter (Jupyter kernels in the ``code-interpreter`` template,
reached through the agent) is being built separately, and its in-sandbox server will emit the
E2B ``/execute`` NDJSON lines. Until it is wired in here, every call answers 501 with a JSON
body saying so.

For whoever wires it in: ``serve`` is called only for a running sandbox, and nothing has been
authenticated yet. The e2b SDKs send ``X-Access-Token`` on ``/execute`` only (never on
``/contexts``), so ``/execute`` must check it with ``has_access_token``.
"""

from __future__ import annotations

import hmac
from typing import Any

from ...manager import Manager
from .asgi import Scope, headers_of, send_json
from .envd import access_token


def has_access_token(manager: Manager, sandbox_id: str, scope: Scope) -> bool:
    """Whether the request carries the sandbox's access token (``X-Access-Token``)."""
    given = headers_of(scope).get("x-access-token", "")
    # SECURITY: constant-time comparison of the sandbox's token.
    return hmac.compare_digest(given.encode(), access_token(manager, sandbox_id).encode())


async def serve(manager: Manager, sandbox_id: str, scope: Scope, receive: Any, send: Any) -> None:
    """Answer one code-interpreter request for a running sandbox."""
    message = (
        "the code interpreter (port 49999: /execute, /contexts) is not available in this corral "
        f"server yet; {scope['method']} {scope['path']} was not run"
    )
    await send_json(send, 501, {"code": 501, "message": message})
