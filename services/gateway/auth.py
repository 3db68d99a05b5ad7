"""Who may connect: the API token (header or ``?token=``) and the WebSocket Origin."""

from __future__ import annotations

import hmac
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
    host = headers.get("host", "")
    return origin.split("://", 1)[-1] == host
