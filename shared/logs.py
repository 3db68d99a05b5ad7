"""Logging set-up: text or JSON lines, and a filter that masks every known secret.

Secrets never reach a log call on purpose; the filter is the second line of defence
(an exception text from a driver, a URL with a password in it).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import urllib.parse
from typing import Any

from shared.settings import Settings, is_sentinel_url, parse_sentinel_url

_secrets: set[str] = set()
_URL_PASSWORD = re.compile(r"([\w+.-]+://[^:/@\s]*:)[^@\s]+@")


def redis_url_password(url: str) -> str:
    """The password in a Redis URL, to be masked wherever it might still turn up."""
    try:
        if is_sentinel_url(url):
            return str(parse_sentinel_url(url).password.reveal())
        return urllib.parse.unquote(urllib.parse.urlsplit(url).password or "")
    except ValueError:
        return ""


def register_secret(value: str) -> None:
    if value and len(value) >= 3:
        _secrets.add(value)


def redact(text: str) -> str:
    text = _URL_PASSWORD.sub(r"\1***@", text)
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return text


class _RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.msg, record.args = redact(msg), None
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, ensure_ascii=False)


class _Repeats(logging.Filter):
    """Let through one record of a kind per ``period`` seconds; say how many were held back.

    For messages a peer can make us repeat as fast as the loop turns: asyncio logs
    "socket.accept() out of system resource" (with a traceback) on every accept while the
    process is out of file descriptors, and "socket.send() raised exception" on every write
    to a connection that was reset.
    """

    KINDS = ("socket.accept() out of system resource", "socket.send() raised exception")

    def __init__(self, period: float = 10.0) -> None:
        super().__init__()
        self.period = period
        self.seen: dict[str, tuple[float, int]] = {}  # kind -> (last let through, held back)

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        kind = next((k for k in self.KINDS if k in message), None)
        if kind is None:
            return True
        now = time.monotonic()
        last, held = self.seen.get(kind, (-self.period, 0))
        if now - last < self.period:
            self.seen[kind] = (last, held + 1)
            return False
        self.seen[kind] = (now, 0)
        if held:
            record.msg = f"{message} ({held} more like it in the last {self.period:g} s)"
        return True


def setup(settings: Settings, service: str) -> None:
    register_secret(settings.mysql_password.reveal())
    register_secret(settings.api_token.reveal())
    register_secret(settings.redis_sentinel_password.reveal())
    register_secret(redis_url_password(settings.redis_url))
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RedactingFilter())
    if settings.log_format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s %(levelname)-7s {service} %(name)s: %(message)s"
        ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    # uvicorn's access log is noise at INFO for a WebSocket-heavy service.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    # Frame-by-frame protocol traces would drown everything else at DEBUG.
    # uvicorn.error logs every WebSocket open/close at INFO: thousands of lines a minute.
    for noisy, floor in (("uvicorn.error", logging.WARNING), ("websockets", logging.INFO),
                         ("asyncio", logging.INFO)):
        logging.getLogger(noisy).setLevel(max(root.level, floor))
    logging.getLogger("asyncio").addFilter(_Repeats())
