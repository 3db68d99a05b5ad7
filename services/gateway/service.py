"""The gateway's whole life: serve until ``stop``, then drain (readiness off, 1001, exit)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
from collections.abc import Iterator

import uvicorn

from services.gateway.app import create_app
from services.gateway.transport import HttpProtocol, WebSocketProtocol
from shared.errors import ConfigError
from shared.settings import Settings

log = logging.getLogger("vigil.gateway")
MAX_FRAME = 64 * 1024


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers (shared.lifecycle owns the signals), telling
    when it is listening."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.up = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.up.set()


async def _serve(server: uvicorn.Server) -> bool:
    """uvicorn's serve(); False when it could not start (it calls sys.exit on bind errors)."""
    try:
        await server.serve()
    except SystemExit:
        return False
    return server.started


def _raise_open_files_limit() -> None:
    """Every client holds a file descriptor: take the hard limit, not the soft one (1,024
    under systemd and many shells, far below thousands of clients)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            log.debug("open files limit raised from %d to %d", soft, hard)


async def run(settings: Settings, stop: asyncio.Event) -> None:
    if not settings.api_token and not settings.gateway_is_loopback:
        raise ConfigError([
            f"VIGIL_GATEWAY_HOST: refusing to listen on {settings.gateway_host!r} without "
            "VIGIL_API_TOKEN: set a token, or bind a loopback address such as 127.0.0.1"
        ])
    _raise_open_files_limit()
    app = create_app(settings)
    config = uvicorn.Config(
        app, host=settings.gateway_host, port=settings.gateway_port, log_config=None,
        http=HttpProtocol, ws=WebSocketProtocol, ws_max_size=MAX_FRAME,
        ws_ping_interval=settings.ws_ping, ws_ping_timeout=settings.ws_ping,
        # Off: compression is per connection, so every frame would be compressed once per
        # client; frames are small JSON, and fan-out must encode each event once.
        ws_per_message_deflate=False,
        timeout_graceful_shutdown=max(1, int(settings.grace)), lifespan="on",
        server_header=False,
    )
    server = _Server(config)
    serving = asyncio.create_task(_serve(server), name="uvicorn")
    stopper = asyncio.create_task(stop.wait())
    listening = asyncio.create_task(server.up.wait())
    await asyncio.wait({serving, stopper, listening}, return_when=asyncio.FIRST_COMPLETED)
    listening.cancel()
    if server.started:
        port = server.servers[0].sockets[0].getsockname()[1]  # the real one when asked for 0
        log.info("gateway listening on http://%s:%d/ (token %s)", settings.gateway_host, port,
                 "required" if settings.api_token else "not required")
    await asyncio.wait({serving, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if serving.done():
        stopper.cancel()
        if not serving.result():
            log.error("cannot listen on %s:%d (in use, or not an address of this host): "
                      "set VIGIL_GATEWAY_PORT / VIGIL_GATEWAY_HOST", settings.gateway_host,
                      settings.gateway_port)
            raise SystemExit(1)
        return
    log.info("draining: readiness off, closing %d WebSocket clients with 1001",
             len(app.state.hub.clients))
    app.state.draining = True
    hub = app.state.hub
    hub.close_all(1001, "server shutting down: reconnect with since")
    # uvicorn's own shutdown closes what is still open with 1012: let every session send
    # its 1001 first.
    loop = asyncio.get_running_loop()
    started = loop.time()
    if not await hub.wait_no_clients(settings.grace):
        log.warning("%d WebSocket clients still open after %.0f s; uvicorn closes them",
                    len(hub.clients), settings.grace)
    server.should_exit = True
    # The whole drain stays within VIGIL_GRACE + 6 s (the pods' grace periods count on it).
    left = max(1.0, settings.grace - (loop.time() - started))
    try:
        await asyncio.wait_for(serving, timeout=left + 5)
    except TimeoutError:
        log.warning("uvicorn did not stop within the grace period")
    log.info("gateway on %s:%d stopped", settings.gateway_host, settings.gateway_port)
