"""Who may connect: the API token (header or ``?token=``) and the WebSocket Origin."""

from __future__ import annotations

import hmac
import ipaddress
from collections import Counter
from collections.abc import Mapping

from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from shared.settings import Secret


def token_ok(conn: HTTPConnection, expected: Secret) -> bool:
    """True when no token is configured, or the request carries it (compared in constant time)."""
    if not expected:
        return True
    given = ""
    header = conn.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        given = header[7:].strip()
    else:
        given = conn.query_params.get("token", "")
    return hmac.compare_digest(given.encode(), expected.reveal().encode())


async def refuse(scope: Scope, receive: Receive, send: Send, status: int, field: str,
                 message: str) -> None:
    """Answer a request, or refuse a WebSocket upgrade, with the API's JSON error.

    Upgrades are refused through the ASGI denial-response extension (uvicorn has it), so
    a script can tell a wrong token from a foreign Origin; without it a server can only
    close, which the client sees as a bare 403.
    """
    if scope["type"] == "http" or "websocket.http.response" in scope.get("extensions", {}):
        body = JSONResponse({"error": {"field": field, "message": message}}, status_code=status)
        await body(scope, receive, send)  # as websocket.http.response.* on a WebSocket
    else:
        await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})


def query_problem(conn: HTTPConnection, allowed: tuple[str, ...]) -> tuple[str, str] | None:
    """(field, message) for the first query parameter that is unknown, repeated or empty."""
    items = conn.query_params.multi_items()
    seen = Counter(name for name, _ in items)  # not list.count per item: O(n^2) on a
    for name, value in items:                  # request head of thousands of "a&a&a..."
        if seen[name] > 1:
            return name[:64], "given more than once"
        if name == "token":  # its value is token_ok's business
            continue
        if name not in allowed:
            return name[:64], ("unknown query parameter (allowed: "
                               f"{', '.join(allowed) or 'none'})")
        if not value:
            return name[:64], "must not be empty"
    return None


def origin_allowed(headers: Mapping[str, str], allowed: tuple[str, ...]) -> bool:
    """Browsers send Origin; scripts usually do not.

    A present Origin must match the Host the request came to (same-origin: the gateway's
    own dashboard) or be listed in ``VIGIL_ALLOWED_ORIGINS``, so another site's page
    cannot read a gateway in the user's network (cross-site WebSocket hijacking).
    """
    origin = headers.get("origin")
    if origin is None:
        return True
    origin = origin.rstrip("/")
    if "*" in allowed or origin in allowed:
        return True
    scheme, sep, rest = origin.partition("://")
    return bool(sep) and scheme.lower() in ("http", "https") and rest == headers.get("host", "")


def loopback_host(host_header: str) -> bool:
    """Whether a Host header names this machine's loopback (any port).

    Without a token the gateway listens on loopback only; checking Host as well stops DNS
    rebinding (a page on another site whose name was re-pointed at 127.0.0.1 would
    otherwise be same-origin with the gateway and read everything).
    """
    host = host_header.strip().lower()
    if host.startswith("["):
        name = host[1:host.find("]")] if "]" in host else host
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    if name in ("localhost", "localhost.") or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
