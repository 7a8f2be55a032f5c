"""The ASGI app: authentication, error rendering, routes, and the process entry point `serve`."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__, errors
from ..compat.e2b import E2BCompat
from ..manager import Manager
from ..settings import Settings
from . import fastpath, ports
from .auth import check_key, is_open, load_or_create_key
from .render import error_response, invalid_request
from .routes import backends, code, commands, files, network, pty, sandboxes, secrets, templates
from .routes import ports as port_routes

log = logging.getLogger("corral.server")

MAX_JSON_BODY = 20 * 1024 * 1024
WS_QUERY_KEY_PATH = re.compile(r"/v1/sandboxes/[^/]+/pty/ws")


class Guard:
    """Pure ASGI middleware: the API key on every call but the open paths, a cap on JSON bodies,
    the fast path for running commands and cells (see ``fastpath.py``), and the requests of the
    e2b SDKs handed to ``compat.e2b`` (which checks the API key or the sandbox's access token itself).

    (Starlette's BaseHTTPMiddleware would copy every streamed response through a memory stream.)
    """

    def __init__(
        self, app: Any, api_key: str, domain: str = "localhost", e2b: E2BCompat | None = None
    ) -> None:
        self.app, self.api_key, self.domain, self.e2b = app, api_key, domain, e2b

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket") and (target := ports.route(scope, self.domain)):
            # A sandbox's port (by path, or a host name of CORRAL_DOMAIN other than the e2b SDKs'
            # envd and interpreter ports): its own authorization, never the API key.
            state = scope["app"].state
            return await state.port_proxy(state.manager, target, scope, receive, send)
        if scope["type"] == "websocket":
            return await self._websocket(scope, receive, send)
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.e2b is not None and (e2b := self.e2b.handler(scope, headers)) is not None:
            # E2B's SDKs (their API paths, envd and interpreter ports, other ports of their host
            # names): their own auth and error shapes.
            return await e2b(scope, receive, send)
        try:
            if not is_open(scope["method"], scope["path"]):
                check_key(self.api_key, headers)
            if scope["method"] in ("POST", "PUT", "PATCH") and not scope["path"].endswith(
                ("/files", "/files/signed", "/files/multipart", "/v1/templates")
            ):
                length = headers.get("content-length", "")
                if length.isdigit() and int(length) > MAX_JSON_BODY:
                    raise errors.PayloadTooLargeError(f"request body over {MAX_JSON_BODY} bytes")
        except errors.CorralError as err:
            return await error_response(err)(scope, receive, send)
        if fast := fastpath.match(scope):
            manager: Manager = scope["app"].state.manager
            route, sandbox_id = fast
            return await fastpath.serve(route, manager, sandbox_id, scope, receive, send)
        return await self.app(scope, receive, send)

    async def _websocket(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """The key in the ``X-API-Key`` (or bearer) header or, on the terminal WebSocket only (browsers
        cannot set headers there), the ``api_key`` query parameter. Refused: accepted, then closed
        with code 4401 (which a browser can see, unlike an HTTP 403)."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if (
            "x-api-key" not in headers
            and "authorization" not in headers
            and WS_QUERY_KEY_PATH.fullmatch(scope["path"])
        ):
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            if query.get("api_key"):
                headers["x-api-key"] = query["api_key"][0]
        try:
            check_key(self.api_key, headers)
        except errors.AuthenticationError as err:
            message = await receive()
            if message["type"] == "websocket.connect":
                await send({"type": "websocket.accept"})
                await send({"type": "websocket.close", "code": 4401, "reason": err.message[:120]})
            return None
        return await self.app(scope, receive, send)


def create_app(settings: Settings, manager: Manager | None = None) -> FastAPI:
    """Build the app. Without a manager, the lifespan builds one from settings (store + backend)."""
    api_key, created = load_or_create_key(settings.data_dir, settings.api_key)
    if created:
        print(f"corral: generated API key (stored in {settings.data_dir / 'api_key'}): {api_key}", flush=True)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        m = manager or Manager.from_settings(settings)
        app.state.manager = m
        app.state.port_proxy = ports.PortProxy()
        await m.start()
        try:
            yield
        finally:
            await m.shutdown()
            await app.state.port_proxy.close()

    app = FastAPI(title="corral", version=__version__, lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.settings = settings

    app.add_middleware(
        Guard, api_key=api_key, domain=settings.domain, e2b=E2BCompat(api_key, settings.e2b_domain)
    )

    @app.exception_handler(errors.CorralError)
    async def corral_error(request: Request, err: errors.CorralError) -> JSONResponse:
        return error_response(err)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        return error_response(invalid_request(err.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        cls = {404: errors.NotFoundError, 405: errors.InvalidRequestError}.get(
            err.status_code, errors.CorralError
        )
        body = {"code": cls.code, "message": str(err.detail)}
        return JSONResponse(body, status_code=err.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(errors.CorralError(f"internal error: {type(err).__name__}"))

    @app.get("/health", tags=["service"])
    async def health(request: Request) -> dict[str, Any]:
        m: Manager = request.app.state.manager
        return {
            "status": "ok",
            "version": __version__,
            "backend": m.backend.name,
            "sandboxes": len(m.live),
            "pool_ready": m.pool.ready_count(),
        }

    @app.get("/metrics", tags=["service"], response_class=PlainTextResponse)
    async def metrics_endpoint() -> PlainTextResponse:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    app.include_router(sandboxes.router)
    app.include_router(backends.router)
    app.include_router(commands.router)
    app.include_router(files.router)
    app.include_router(pty.router)
    app.include_router(code.router)
    app.include_router(port_routes.router)
    app.include_router(network.router)
    app.include_router(secrets.router)
    app.include_router(templates.router)
    return app


def serve(overrides: dict[str, Any] | None = None) -> None:
    """`corral serve`: build the default template if needed, then serve until SIGTERM/SIGINT."""
    import uvicorn

    from ..templates import ensure_template
    from ..templates.builder import _progress_printer

    settings = Settings.load(overrides)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    ensure_template(settings.templates_dir, "base", progress=_progress_printer())
    app = create_app(settings)
    scheme = "https" if settings.tls_cert_file else "http"
    print(f"corral {__version__} serving on {scheme}://{settings.host}:{settings.port}", flush=True)
    # Idle keep-alive connections live 75 s (as behind nginx): SDK clients hold one per sandbox, and
    # a short timeout races with their next request on the same connection.
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        timeout_keep_alive=75,
        ssl_certfile=str(settings.tls_cert_file) if settings.tls_cert_file else None,
        ssl_keyfile=str(settings.tls_key_file) if settings.tls_key_file else None,
    )
