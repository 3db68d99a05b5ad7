"""``/metrics``, ``/healthz`` and ``/readyz`` for the services that have no web app of their own.

Liveness never depends on Redis or MySQL (a sick dependency is not a stuck process);
readiness does. Served on ``VIGIL_METRICS_PORT`` when it is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shared.errors import ConfigError

log = logging.getLogger("vigil.observe")


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  ready: Callable[[], bool]) -> None:
    try:
        line = await asyncio.wait_for(reader.readline(), 5)
        while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
            pass
        parts = line.decode("latin-1").split()
        path = parts[1].split("?")[0] if len(parts) >= 2 else ""
        ctype = "text/plain; charset=utf-8"
        if path == "/metrics":
            status, body, ctype = "200 OK", generate_latest(), CONTENT_TYPE_LATEST
        elif path == "/healthz":
            status, body = "200 OK", b"ok\n"
        elif path == "/readyz":
            ok = ready()
            status, body = ("200 OK", b"ready\n") if ok else (
                "503 Service Unavailable", b"not ready\n")
        else:
            status, body = "404 Not Found", b"not found\n"
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode() + body
        )
        await writer.drain()
    except (TimeoutError, ConnectionError, UnicodeDecodeError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


@contextlib.asynccontextmanager
async def serve(port: int | None, ready: Callable[[], bool]) -> AsyncIterator[int | None]:
    """Serve the endpoints while the block runs; yields the bound port (None when disabled)."""
    if port is None:
        yield None
        return
    try:
        server = await asyncio.start_server(
            lambda r, w: _handle(r, w, ready), host="0.0.0.0", port=port
        )
    except OSError as exc:  # in use, most likely: say so, exit 2, no traceback
        raise ConfigError([f"VIGIL_METRICS_PORT: cannot listen on 0.0.0.0:{port}: "
                           f"{exc.strerror or exc}"]) from None
    bound = server.sockets[0].getsockname()[1]
    log.info("metrics and health on :%d (/metrics /healthz /readyz)", bound)
    try:
        yield bound
    finally:
        server.close()
        await server.wait_closed()
