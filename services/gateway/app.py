"""The Starlette application: routes, static dashboard, lifespan holding typed state."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.gateway import api, ws
from services.gateway.auth import loopback_host, refuse
from services.gateway.hub import Hub
from shared.keys import Keys
from shared.redis import TRANSIENT, connect
from shared.settings import Settings

STATIC = Path(__file__).parent / "static"
log = logging.getLogger("vigil.gateway")
SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; connect-src 'self' ws: wss:; style-src 'self'; script-src 'self'; "
     b"img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),  # the dashboard URL may carry ?token=
    (b"cache-control", b"no-store"),
]


class SecurityHeaders:
    """Pure ASGI middleware (not BaseHTTPMiddleware, which would buffer and break WebSockets)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + SECURITY_HEADERS
            await send(message)

        await self.app(scope, receive, send_with_headers)


class LoopbackHosts:
    """Without a token: refuse requests whose Host is not a loopback name (DNS rebinding)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "")
            if not loopback_host(host):
                await refuse(scope, receive, send, 421, "host", "this gateway answers only "
                             "to a loopback host name without VIGIL_API_TOKEN (set a token "
                             "to serve other names)")
                return
        await self.app(scope, receive, send)


async def not_found(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": {"field": "path", "message": f"no such endpoint: "
                                   f"{request.url.path[:200]}"}}, status_code=404)


async def method_not_allowed(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": {"field": "method", "message": f"{request.method[:16]} is "
                                   f"not allowed on {request.url.path[:200]}"}},
                        status_code=405, headers=getattr(exc, "headers", None))


async def upgrade_required(request: Request) -> Response:
    return JSONResponse({"error": {"field": "upgrade", "message": "/ws is a WebSocket: "
                                   "connect with a WebSocket client"}},
                        status_code=426, headers={"Upgrade": "websocket"})


async def server_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, TRANSIENT):
        return JSONResponse({"error": {"field": None, "message": "redis unavailable"}},
                            status_code=503, headers={"Retry-After": "1"})
    log.error("%s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
    return JSONResponse({"error": {"field": None, "message": "internal error"}},
                        status_code=500)


async def dashboard(request: Request) -> Response:
    return FileResponse(STATIC / "index.html")


def create_app(settings: Settings, stop: asyncio.Event | None = None) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        r = connect(settings)
        reader_redis = connect(settings, max_connections=1)
        hub = Hub(r, Keys(settings.prefix), settings.ws_queue, reader=reader_redis)
        reader_stop = asyncio.Event()
        app.state.settings = settings
        app.state.keys = Keys(settings.prefix)
        app.state.redis = r
        app.state.hub = hub
        app.state.draining = False
        reader = asyncio.create_task(hub.run(reader_stop), name="transitions-reader")
        try:
            yield
        finally:
            reader_stop.set()
            await asyncio.gather(reader, return_exceptions=True)
            await reader_redis.aclose()
            await r.aclose()

    return Starlette(
        routes=[
            Route("/", dashboard),
            Route("/api/instances", api.instances),
            Route("/api/instances/{id}", api.instance),
            Route("/api/summary", api.summary),
            Route("/api/transitions", api.transitions),
            Route("/healthz", api.healthz),
            Route("/readyz", api.readyz),
            Route("/metrics", api.metrics),
            WebSocketRoute("/ws", ws.endpoint),
            Route("/ws", upgrade_required),  # plain HTTP to /ws
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        middleware=[Middleware(SecurityHeaders)] + (
            [] if settings.api_token else [Middleware(LoopbackHosts)]),
        exception_handlers={404: not_found, 405: method_not_allowed,
                            Exception: server_error, **{
            exc: server_error for exc in TRANSIENT}},
        lifespan=lifespan,
    )
