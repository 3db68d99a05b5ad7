"""Settings: the environment, read in one place, into one frozen Struct.

Every variable has a default; a bad value raises ConfigError naming the variable.
Nothing else in Vigil reads ``os.environ``.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import urllib.parse
from collections.abc import Mapping
from typing import Any

import msgspec

from shared.errors import ConfigError

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class Secret:
    """A value that must never be printed: its repr and str are masked."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_sentinel_password: Any = Secret("")  # Secret: AUTH to the Sentinels themselves
    prefix: str = "vigil"
    inventory: str | None = None
    credentials: str | None = None
    mysql_user: str = "vigil"
    mysql_password: Any = Secret("")  # Secret; Any because msgspec never decodes it
    prober_id: str = ""
    consumer: str = ""
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8000
    api_token: Any = Secret("")  # Secret
    allowed_origins: tuple[str, ...] = ()
    metrics_port: int | None = None
    log_level: str = "INFO"
    log_format: str = "text"
    # Tunables beyond the contract; each has a sensible default.
    prober_workers: int = 256
    probes_maxlen: int = 100_000
    transitions_maxlen: int = 10_000
    ws_queue: int = 1_000
    ws_ping: float = 20.0  # seconds between keepalive pings; as long again for the pong
    grace: float = 10.0
    claim_idle: float = 30.0  # seconds before another replica takes over a pending entry

    @property
    def gateway_is_loopback(self) -> bool:
        return is_loopback(self.gateway_host)


SENTINEL_SCHEME = "redis+sentinel"


class SentinelTarget(msgspec.Struct, frozen=True):
    """Where ``redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]``
    points: the Sentinels to ask, the name of the monitored primary, and what to use on it.
    The credentials are the data nodes' (the Sentinels' own password is separate)."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: Any = Secret("")  # Secret

    def __repr__(self) -> str:  # never the password
        hosts = ",".join(f"{h}:{p}" for h, p in self.sentinels)
        return f"SentinelTarget({hosts}/{self.service}/{self.db})"


def is_sentinel_url(url: str) -> bool:
    return url.startswith(SENTINEL_SCHEME + "://")


def parse_sentinel_url(url: str) -> SentinelTarget:
    """Parse a ``redis+sentinel://`` URL; ValueError says which part is wrong (never
    quoting the URL, which may hold a password)."""
    if not is_sentinel_url(url):
        raise ValueError(f"must start with {SENTINEL_SCHEME}://")
    rest = url[len(SENTINEL_SCHEME) + 3:]
    rest, _, query = rest.partition("?")
    if query:
        raise ValueError(f"{SENTINEL_SCHEME}:// takes no query parameters")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        userinfo, hosts = "", netloc
    username = password = None
    if userinfo:
        user, colon, secret = userinfo.partition(":")
        username = urllib.parse.unquote(user) or None
        password = urllib.parse.unquote(secret) if colon else None
    sentinels: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, colon, port = item.strip().rpartition(":")
        if not colon:
            host, port = item.strip(), "26379"
        host = host.strip("[]")
        if not host:
            raise ValueError("a Sentinel address has no host (expected host:port)")
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"Sentinel port must be 1-65535, got {port!r}")
        sentinels.append((host, int(port)))
    parts = [urllib.parse.unquote(p) for p in path.split("/") if p]
    if not parts:
        raise ValueError("no service name: expected .../<service name>[/<db>] after the "
                         "Sentinel addresses (the name in 'sentinel monitor')")
    if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise ValueError("the path must be /<service name>[/<db number>]")
    db = int(parts[1]) if len(parts) == 2 else 0
    return SentinelTarget(tuple(sentinels), parts[0], db, username, Secret(password or ""))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _number(env: Mapping[str, str], name: str, default: float, lo: float, hi: float,
            problems: list[str], *, integer: bool) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        problems.append(f"{name}: expected {'an integer' if integer else 'a number'}, "
                        f"got {raw!r}")
        return default
    if not lo <= value <= hi:
        problems.append(f"{name}: must be between {lo} and {hi}, got {value}")
    return value


def _int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int,
         problems: list[str]) -> int:
    return int(_number(env, name, default, lo, hi, problems, integer=True))


def _float(env: Mapping[str, str], name: str, default: float, lo: float, hi: float,
           problems: list[str]) -> float:
    return _number(env, name, default, lo, hi, problems, integer=False)


def from_env(env: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from the environment; raise ConfigError listing every bad variable."""
    env = os.environ if env is None else env
    problems: list[str] = []
    host = socket.gethostname()

    redis_url = env.get("VIGIL_REDIS_URL") or "redis://127.0.0.1:6379/0"
    if is_sentinel_url(redis_url):
        try:
            parse_sentinel_url(redis_url)
        except ValueError as exc:
            problems.append(f"VIGIL_REDIS_URL: {exc}")
    elif not redis_url.startswith(("redis://", "rediss://", "unix://")):
        problems.append("VIGIL_REDIS_URL: must start with redis://, rediss://, unix:// or "
                        f"{SENTINEL_SCHEME}://")

    prefix = env.get("VIGIL_PREFIX", "vigil")
    if not prefix or any(c.isspace() for c in prefix):
        problems.append("VIGIL_PREFIX: must be non-empty and contain no white space")

    level = (env.get("VIGIL_LOG_LEVEL") or "INFO").upper()
    if level not in LOG_LEVELS:
        problems.append(f"VIGIL_LOG_LEVEL: must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    fmt = (env.get("VIGIL_LOG_FORMAT") or "text").lower()
    if fmt not in ("text", "json"):
        problems.append(f"VIGIL_LOG_FORMAT: must be 'text' or 'json', got {fmt!r}")

    metrics_raw = env.get("VIGIL_METRICS_PORT")
    metrics_port = (
        _int(env, "VIGIL_METRICS_PORT", 0, 0, 65535, problems) if metrics_raw else None
    )
    origins = tuple(
        o.strip().rstrip("/") for o in env.get("VIGIL_ALLOWED_ORIGINS", "").split(",") if o.strip()
    )
    settings = Settings(
        redis_url=redis_url,
        redis_sentinel_password=Secret(env.get("VIGIL_REDIS_SENTINEL_PASSWORD", "")),
        prefix=prefix,
        inventory=env.get("VIGIL_INVENTORY") or None,
        credentials=env.get("VIGIL_CREDENTIALS") or None,
        mysql_user=env.get("VIGIL_MYSQL_USER") or "vigil",
        mysql_password=Secret(env.get("VIGIL_MYSQL_PASSWORD", "")),
        prober_id=env.get("VIGIL_PROBER_ID") or host,
        consumer=env.get("VIGIL_CONSUMER") or host,
        gateway_host=env.get("VIGIL_GATEWAY_HOST") or "127.0.0.1",
        gateway_port=_int(env, "VIGIL_GATEWAY_PORT", 8000, 0, 65535, problems),
        api_token=Secret(env.get("VIGIL_API_TOKEN", "")),
        allowed_origins=origins,
        metrics_port=metrics_port,
        log_level=level,
        log_format=fmt,
        prober_workers=_int(env, "VIGIL_PROBER_WORKERS", 256, 1, 4096, problems),
        probes_maxlen=_int(env, "VIGIL_PROBES_MAXLEN", 100_000, 100, 100_000_000, problems),
        transitions_maxlen=_int(
            env, "VIGIL_TRANSITIONS_MAXLEN", 10_000, 10, 100_000_000, problems
        ),
        ws_queue=_int(env, "VIGIL_WS_QUEUE", 1_000, 1, 1_000_000, problems),
        ws_ping=_float(env, "VIGIL_WS_PING", 20.0, 0.1, 3600.0, problems),
        grace=_float(env, "VIGIL_GRACE", 10.0, 0.0, 3600.0, problems),
        claim_idle=_float(env, "VIGIL_CLAIM_IDLE", 30.0, 0.1, 86400.0, problems),
    )
    if problems:
        raise ConfigError(problems)
    return settings
