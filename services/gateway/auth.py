"""Who may connect: the API token (header or ``?token=``) and the WebSocket Origin."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Mapping

from starlette.requests import HTTPConnection

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


def origin_allowed(headers: Mapping[str, str], allowed: tuple[str, ...]) -> bool:
    """Browsers send Origin; scripts usually do not.

    With ``VIGIL_ALLOWED_ORIGINS`` set, a present Origin must be listed. Without it, a
    present Origin must match the Host the request came to (same-origin), so another
    site's page cannot read a gateway in the user's network (cross-site WebSocket
    hijacking).
    """
    origin = headers.get("origin")
    if origin is None:
        return True
    origin = origin.rstrip("/")
    if allowed:
        return "*" in allowed or origin in allowed
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
