"""One probe: TCP connect, MySQL handshake and login, ``SELECT 1``, COM_QUIT.

Blocking pymysql code, run in a worker thread. Every socket operation carries a
timeout taken from the probe's whole deadline, and every successful probe logs in
fully and says COM_QUIT, so probes never raise the server's ``Aborted_connects`` /
``Aborted_clients`` nor push the prober's address toward ``max_connect_errors``.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import pymysql

from shared.inventory import Credential
from shared.schema import TLS, Instance

AUTH_ERRORS = {1044, 1045, 1251, 1698, 1820, 1862, 2059, 2061}
TOO_MANY = {1040, 1203, 1226}
CLEAR_TEXT_PLUGINS = {b"mysql_clear_password", b"dialog"}
HOST_BLOCKED = {1129, 1130}  # 1130: host not allowed to connect; both are the host's fault


@dataclass(slots=True)
class Outcome:
    ok: bool
    latency_ms: float
    reason: str | None = None
    message: str | None = None


class _NamedContext(ssl.SSLContext):
    """An SSLContext that checks the certificate against ``server_name``, not the address."""

    server_name: str | None = None

    def wrap_socket(self, sock: Any, *args: Any, **kwargs: Any) -> Any:
        if self.server_name:
            kwargs["server_hostname"] = self.server_name
        return super().wrap_socket(sock, *args, **kwargs)


@lru_cache(maxsize=256)
def tls_context(tls: TLS) -> ssl.SSLContext:
    """One context per TLS configuration, built once and shared by every probe that uses it.

    Building a context loads the CA bundle, which costs ~20 ms: per probe that would be
    most of the probe's cost (pymysql does it per connection unless given a context).
    """
    ctx = _NamedContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.server_name = tls.server_name
    if tls.verify:
        if tls.ca:
            with _tls_file("tls.ca", tls.ca):
                ctx.load_verify_locations(cafile=tls.ca)
        else:
            ctx.load_default_certs()
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if tls.cert and tls.key:
        with _tls_file("tls.cert/tls.key", f"{tls.cert}, {tls.key}"):
            ctx.load_cert_chain(tls.cert, tls.key)
    return ctx


class TLSFileError(Exception):
    """A CA, certificate or key file named in the inventory cannot be used by this prober."""


@contextlib.contextmanager
def _tls_file(field: str, path: str) -> Iterator[None]:
    try:
        yield
    except (OSError, ssl.SSLError) as exc:  # missing, unreadable, not PEM, key mismatch
        raise TLSFileError(f"{field} {path}: {getattr(exc, 'strerror', None) or exc}") from None


class _ProbeConnection(pymysql.connections.Connection):
    """A pymysql connection without the ``SET NAMES`` round trip after login.

    The probe sends one ``SELECT 1`` whose answer needs no character set agreement; the
    handshake's charset is enough. One round trip less per probe, ~15 % less CPU.
    """

    def set_character_set(self, charset: str, collation: str | None = None) -> None:
        self.charset, self.collation = charset, collation

    def _process_auth(self, plugin_name: bytes, auth_packet: Any, handler: Any = None) -> Any:
        # A server (or whoever answers at that address) may ask to switch to a plugin that
        # sends the password in clear text; on a connection without TLS, refuse.
        if plugin_name in CLEAR_TEXT_PLUGINS and not getattr(self, "_secure", False):
            raise pymysql.err.OperationalError(
                2059, f"server asked for {plugin_name.decode()!s} (the password in clear "
                "text) over a connection without TLS: refused")
        return super()._process_auth(plugin_name, auth_packet, handler)  # type: ignore[misc]


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and whatever caused it: pymysql wraps socket errors in its own."""
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in seen:
        seen.append(cur)
        cur = getattr(cur, "original_exception", None) or cur.__cause__ or cur.__context__
    return seen


def classify(exc: BaseException) -> tuple[str, str]:
    """Map an exception to a contract reason and a human message (never a password)."""
    for e in _chain(exc):
        if isinstance(e, TLSFileError):
            return "tls", f"cannot load {e}"
        if isinstance(e, ssl.SSLError | ssl.CertificateError):
            return "tls", f"TLS: {e}"
        if isinstance(e, socket.gaierror):
            return "dns", f"cannot resolve host: {e.strerror or e}"
        if isinstance(e, TimeoutError | socket.timeout):
            return "timeout", "no answer within the timeout"
        if isinstance(e, ConnectionRefusedError):
            return "refused", "connection refused"
        if isinstance(e, OSError) and e.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return "refused", f"unreachable: {e.strerror}"
    code, text = _mysql_error(exc)
    if code == 2026:  # CR_SSL_CONNECTION_ERROR: e.g. TLS required, server offers none
        return "tls", text
    if code in AUTH_ERRORS:
        return "auth", text
    if code in HOST_BLOCKED:
        return "host_blocked", text
    if code in TOO_MANY:
        return "too_many_connections", text
    if isinstance(exc, pymysql.err.OperationalError) and code in (2003, 2006, 2013):
        return "protocol", text
    if isinstance(exc, pymysql.err.MySQLError):
        return ("protocol" if code is None or code >= 2000 else "unknown"), text
    # Not a MySQL server at the other end (an HTTP port, say): pymysql fails to parse.
    if isinstance(exc, ValueError | IndexError | KeyError | UnicodeDecodeError | AssertionError):
        return "protocol", f"not a MySQL protocol answer ({type(exc).__name__})"
    return "unknown", f"{type(exc).__name__}: {exc}"


def _mysql_error(exc: BaseException) -> tuple[int | None, str]:
    if isinstance(exc, pymysql.err.MySQLError) and exc.args:
        code = exc.args[0] if isinstance(exc.args[0], int) else None
        text = str(exc.args[1]) if len(exc.args) > 1 else str(exc.args[0])
        return code, (f"{code}: {text}" if code else text)
    return None, str(exc)


def probe(inst: Instance, cred: Credential | None, deadline: float) -> Outcome:
    """Probe ``inst`` once; ``deadline`` is a ``time.monotonic()`` instant for the whole probe."""
    start = time.monotonic()
    if cred is None:
        return Outcome(False, 0.0, "auth",
                       f"no credentials named {inst.credentials!r} (see VIGIL_CREDENTIALS)")
    conn: Any = None  # pymysql.Connection; private attributes are used below
    try:
        budget = max(deadline - start, 0.001)
        conn = _ProbeConnection(
            host=inst.host, port=inst.port, user=cred.user, password=cred.password.reveal(),
            connect_timeout=budget, read_timeout=budget, write_timeout=budget,
            ssl=tls_context(inst.tls) if inst.tls else None,
            ssl_disabled=inst.tls is None,
            autocommit=None,  # skip pymysql's extra SET AUTOCOMMIT round trip
            charset="utf8mb4",
            program_name="vigil",
        )
        # The login used part of the budget: the query gets only what is left.
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("probe deadline passed after login")
        # pymysql has no public setter for a connection's timeouts after connect.
        conn._read_timeout = conn._write_timeout = left
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            cur.fetchone()
        conn.close()  # COM_QUIT: a clean goodbye, not an aborted client
        conn = None
        return Outcome(True, round((time.monotonic() - start) * 1000, 3))
    except Exception as exc:
        reason, message = classify(exc)
        return Outcome(False, round((time.monotonic() - start) * 1000, 3), reason,
                       _scrub(message, cred))
    finally:
        if conn is not None and conn.open:
            try:
                conn.close()  # still say goodbye when the query itself failed
            except Exception:
                conn._force_close()


def _scrub(message: str, cred: Credential) -> str:
    """Defence in depth: a driver message must never carry the password."""
    secret = cred.password.reveal()
    if secret and secret in message:
        message = message.replace(secret, "***")
    return message[:500]
