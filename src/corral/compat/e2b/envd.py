"""What the e2b SDKs call "envd" (sandbox port 49983): the Connect services, ``/files``, ``/health``.

Every call but ``/health`` needs the sandbox's access token (``X-Access-Token``, handed out at
create and connect); ``/files`` also takes a v1 signature in the query instead (presigned URLs).
"""

from __future__ import annotations

import hmac
from typing import Any

from ... import errors
from ...manager import Manager
from . import connect
from .asgi import Scope, headers_of, send_empty, send_json
from .files import EXPIRED, FilesHandler, check_signature, query_of
from .filesystem import FilesystemService
from .live import running
from .process import ProcessService, user_from

# The envd version the SDKs are told: every feature they gate on (up to 0.6.4) is served.
ENVD_VERSION = "0.6.13"
UNAUTHORIZED = "unauthorized access, please provide a valid access token or method signing if supported"


def access_token(m: Manager, sandbox_id: str) -> str:
    """The sandbox's envd access token: derived from its secret (kept in the store, so it
    survives a server restart) and useless for any other sandbox."""
    secret = m.get(sandbox_id).url_secret
    return hmac.new(bytes.fromhex(secret), b"e2b envd access token", "sha256").hexdigest()


def sandbox_gone(sandbox_id: str) -> tuple[int, dict[str, Any]]:
    """What E2B's proxy answers for a sandbox that does not run (the SDK reads "was not found")."""
    return 502, {"code": 502, "message": "The sandbox was not found", "sandboxId": sandbox_id}


class Envd:
    def __init__(self, manager: Manager) -> None:
        self.m = manager
        self.files = FilesHandler(manager)
        self.rpc: dict[str, connect.Method] = {}
        for service, methods in (("/process.Process/", ProcessService(manager).methods()),
                                 ("/filesystem.Filesystem/", FilesystemService(manager).methods())):
            self.rpc.update({service + name: method for name, method in methods.items()})

    async def __call__(self, sandbox_id: str, scope: Scope, receive: Any, send: Any) -> None:
        path, method = scope["path"], scope["method"]
        headers = headers_of(scope)
        if running(self.m, sandbox_id) is None:
            return await send_json(send, *sandbox_gone(sandbox_id))
        token = access_token(self.m, sandbox_id)
        # SECURITY: constant-time comparison of the sandbox's token.
        authorized = hmac.compare_digest(headers.get("x-access-token", "").encode(), token.encode())
        if path == "/health":
            return await send_empty(send, 204)
        if path == "/files":
            signed = "invalid" if authorized else check_signature(query_of(scope), method, token)
            if signed == "expired":
                return await send_json(send, 401, EXPIRED)
            if not authorized and signed != "ok":
                return await send_json(send, 401, {"code": 401, "message": UNAUTHORIZED})
            return await self.files(sandbox_id, scope, receive, send)
        rpc = self.rpc.get(path)
        if rpc is None:
            return await send_json(send, 404, {"code": "not_found", "message": f"no envd route {method} {path}"})
        if method != "POST":
            return await send_json(send, 405, {"code": "unimplemented", "message": "Connect calls are POST"})
        if not authorized:
            return await send_json(send, 401, {"code": "unauthenticated", "message": UNAUTHORIZED})
        try:
            user = user_from(headers.get("authorization"))
        except errors.AuthenticationError as e:
            return await send_json(send, 401, {"code": "unauthenticated", "message": e.message})
        call = connect.Call(sandbox_id=sandbox_id, user=user, headers=headers)
        await connect.serve(rpc, call, scope, receive, send)
