"""Which requests are E2B's, and where they go.

Sandbox traffic is recognised the two ways the e2b SDKs address it: the ``E2b-Sandbox-Id`` and
``E2b-Sandbox-Port`` headers (``E2B_SANDBOX_URL`` pointing at corral), or a host name
``<port>-<sandboxID>.<domain>`` (``E2B_DOMAIN``). Port 49983 is envd, 49999 the code
interpreter; a host name for another port is left to corral's port URLs (``server/ports.py``,
``CORRAL_DOMAIN``), which is what the SDKs' ``get_host(port)`` is for; another port in the
headers answers 502. Presigned ``/files`` URLs carry neither: their
signature says which sandbox they are for. The control plane (``/sandboxes``, ``/v2/...``,
``/templates``...) needs the API key, like corral's own API, and its paths do not overlap
corral's (``/v1/...``, ``/health``, ``/metrics``, ``/docs``, ``/openapi.json``).
"""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from ... import errors
from ...manager import Manager
from ...server import ports
from ...server.auth import check_key
from . import interpreter
from .asgi import Scope, headers_of, send_json
from .control import Control
from .envd import UNAUTHORIZED, Envd, access_token, sandbox_gone
from .files import EXPIRED, check_signature, query_of
from .live import running, running_ids

log = logging.getLogger("corral.compat.e2b")

ENVD_PORT, INTERPRETER_PORT = 49983, 49999
ENVD_RPC_PREFIXES = ("/process.Process/", "/filesystem.Filesystem/")
CONTROL_PREFIXES = ("/sandboxes", "/v2/sandboxes", "/templates", "/v2/templates", "/v3/templates",
                    "/snapshots", "/volumes", "/secrets")
SANDBOX_ID = re.compile(r"^[a-z0-9]{1,64}$")
HOST_LABEL = re.compile(r"^(?P<port>\d{1,5})-(?P<sid>[a-z0-9]{1,64})$")

ASGI = Callable[[Scope, Any, Any], Awaitable[None]]


class E2BCompat:
    """Picks E2B requests out of the listener's traffic (``handler``) and serves them."""

    def __init__(self, api_key: str, domain: str | None = None) -> None:
        self.api_key = api_key
        self.domain = domain.lower().strip(".") if domain else None
        self._manager: Manager | None = None
        self._control: Control | None = None
        self._envd: Envd | None = None

    def handler(self, scope: Scope, headers: dict[str, str]) -> ASGI | None:
        """The ASGI callable for an E2B request, or None for corral's own API."""
        app = self._route(scope, headers)
        return None if app is None else _answering_errors(app)

    def _route(self, scope: Scope, headers: dict[str, str]) -> ASGI | None:
        path = scope["path"]
        if any(path == p or path.startswith(p + "/") for p in CONTROL_PREFIXES):
            # Before the sandbox headers: some SDK releases send them on API calls too (connect),
            # and no sandbox service has a path under these prefixes.
            return self._control_plane
        sandbox_id = headers.get("e2b-sandbox-id")
        if sandbox_id is not None:
            port = headers.get("e2b-sandbox-port", str(ENVD_PORT))
            return lambda s, r, w: self._sandbox(sandbox_id, port, s, r, w)
        host = self._host_route(headers.get("host", ""))
        if host is not None and (self.domain is not None or self._known(scope, host[1])):
            # Other ports than envd's and the interpreter's are servers inside the sandbox: corral's
            # port proxy (server/ports.py) serves them, a closed one answering in E2B's shape.
            return lambda s, r, w: self._sandbox(host[1], host[0], s, r, w)
        if path == "/files" and b"signature=" in scope.get("query_string", b""):
            return self._presigned
        if "x-access-token" in headers and (path == "/files" or path.startswith(ENVD_RPC_PREFIXES)):
            # SDKs from about 2.7 to 2.2x drop the routing headers after Sandbox.connect(), and
            # keep only the access token: that names the sandbox too.
            return lambda s, r, w: self._by_token(headers["x-access-token"], s, r, w)
        return None

    def _host_route(self, host: str) -> tuple[str, str] | None:
        """(port, sandbox id) of a ``<port>-<sandboxID>.<domain>`` host name (any domain when corral
        was not told its E2B domain, then only for ids of sandboxes it has had)."""
        name = host.rsplit(":", 1)[0].lower() if not host.startswith("[") else ""
        label, dot, domain = name.partition(".")
        if not dot or (self.domain is not None and domain != self.domain):
            return None
        m = HOST_LABEL.fullmatch(label)
        return None if m is None else (m["port"], m["sid"])

    def _known(self, scope: Scope, sandbox_id: str) -> bool:
        """Whether a sandbox of that id ever existed here: without a configured domain, a host
        name that merely looks like ``<port>-<id>.<domain>`` stays corral's own API's."""
        manager, _, _ = self._services(scope)
        try:
            manager.get(sandbox_id)
        except errors.NotFoundError:
            return False
        return True

    def _services(self, scope: Scope) -> tuple[Manager, Control, Envd]:
        manager: Manager = scope["app"].state.manager
        if self._manager is not manager or self._control is None or self._envd is None:
            self._manager, self._control, self._envd = manager, Control(manager, self.domain), Envd(manager)
        return manager, self._control, self._envd

    async def _sandbox(self, sandbox_id: str, port: str, scope: Scope, receive: Any, send: Any) -> None:
        manager, _, envd = self._services(scope)
        if not SANDBOX_ID.fullmatch(sandbox_id) or running(manager, sandbox_id) is None:
            return await send_json(send, *sandbox_gone(sandbox_id))
        if port == str(ENVD_PORT):
            return await envd(sandbox_id, scope, receive, send)
        if port == str(INTERPRETER_PORT):
            return await interpreter.serve(manager, sandbox_id, scope, receive, send)
        # Any other port: corral's port proxy (public, or the sandbox's traffic token); a closed
        # one answers as E2B's proxy does (the SDK reads "port is not open").
        number = int(port) if port.isdigit() and len(port) <= 5 else 0

        async def closed(send: Any) -> None:
            message = f"The sandbox is running but port is not open: nothing listens on port {port[:8]}"
            await send_json(send, 502, {"code": 502, "message": message, "sandboxId": sandbox_id, "port": number or port[:8]})

        if not 1 <= number <= 65535:
            return await closed(send)
        state = scope["app"].state
        target = ports.Target(sandbox_id, number, scope["path"], "/")
        await state.port_proxy(manager, target, scope, receive, send, closed=closed)

    async def _presigned(self, scope: Scope, receive: Any, send: Any) -> None:
        """A presigned /files URL: the sandbox is the one whose token made its signature."""
        manager, _, envd = self._services(scope)
        query = query_of(scope)
        for sandbox_id in running_ids(manager):
            signed = check_signature(query, scope["method"], access_token(manager, sandbox_id))
            if signed == "ok":
                return await envd(sandbox_id, scope, receive, send)
            if signed == "expired":
                return await send_json(send, 401, EXPIRED)
        await send_json(send, 401, {"code": 401, "message": "invalid file URL signature (or its sandbox is gone)"})

    async def _by_token(self, token: str, scope: Scope, receive: Any, send: Any) -> None:
        manager, _, envd = self._services(scope)
        for sandbox_id in running_ids(manager):
            # SECURITY: constant-time comparison with each sandbox's token.
            if hmac.compare_digest(token.encode(), access_token(manager, sandbox_id).encode()):
                return await envd(sandbox_id, scope, receive, send)
        await send_json(send, 401, {"code": "unauthenticated", "message": UNAUTHORIZED})

    async def _control_plane(self, scope: Scope, receive: Any, send: Any) -> None:
        try:
            check_key(self.api_key, headers_of(scope))
        except errors.AuthenticationError as e:
            return await send_json(send, 401, {"code": 401, "message": e.message})
        _, control, _ = self._services(scope)
        await control(scope, receive, send)


def _answering_errors(app: ASGI) -> ASGI:
    """Any unexpected exception still gets a JSON error the SDKs parse (and is logged)."""

    async def guarded(scope: Scope, receive: Any, send: Any) -> None:
        started = False

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await app(scope, receive, tracking_send)
        except Exception as e:
            log.exception("unexpected error on E2B %s %s", scope["method"], scope["path"])
            if not started:
                await send_json(send, 500, {"code": 500, "message": f"internal error: {type(e).__name__}"})

    return guarded
