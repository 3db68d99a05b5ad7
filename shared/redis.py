"""Redis connections and Function calls, with bounded retries (tenacity) around single calls."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential_jitter,
)

from shared.keys import FUNCTION_LIBRARY
from shared.settings import Settings, is_sentinel_url, parse_sentinel_url

log = logging.getLogger("vigil.redis")

# Errors worth retrying: the connection, not the command.
TRANSIENT = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)
_SOURCE = resources.files("shared").joinpath("functions.lua").read_text("utf-8")
# Library and function names carry a digest of the code, so replicas of two versions
# (a rolling upgrade) each call their own functions instead of replacing each other's.
FUNCTIONS_VERSION = hashlib.sha1(_SOURCE.encode()).hexdigest()[:8]
FUNCTIONS_CODE = _SOURCE.replace("{V}", FUNCTIONS_VERSION)


def function_name(name: str) -> str:
    """``vigil_fold`` → ``vigil_fold_<version>``, the name this code registered."""
    return f"{name}_{FUNCTIONS_VERSION}"


def connect(settings: Settings, *, socket_timeout: float = 5.0,
            max_connections: int = 64) -> aioredis.Redis:
    """A pooled asyncio client. Replies are bytes: payloads are decoded by msgspec.

    The pool *waits* for a free connection (redis-py's default pool raises "Too many
    connections" at once: a burst of a thousand WebSocket connects failed that way).
    The socket timeout bounds a stalled Redis; blocking reads use BLOCK ≤ 1 s.
    With a ``redis+sentinel://`` URL every new connection asks the Sentinels for the
    current primary; after a failover the old connections fail, and the callers' retries
    reconnect to the new primary.
    """
    options: dict[str, Any] = {
        "max_connections": max_connections,
        "timeout": 10,
        "socket_connect_timeout": 5.0,
        "socket_timeout": socket_timeout,
        "health_check_interval": 15,
    }
    pool: aioredis.BlockingConnectionPool
    if is_sentinel_url(settings.redis_url):
        target = parse_sentinel_url(settings.redis_url)
        sentinel = Sentinel(
            target.sentinels,
            sentinel_kwargs={
                "socket_connect_timeout": 2.0,
                "socket_timeout": 2.0,
                "password": settings.redis_sentinel_password.reveal() or None,
            },
        )
        pool = _BlockingSentinelPool(
            target.service, sentinel, db=target.db, username=target.username,
            password=target.password.reveal() or None, **options,
        )
    else:
        pool = aioredis.BlockingConnectionPool.from_url(settings.redis_url, **options)
    return aioredis.Redis.from_pool(pool)


class _BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """redis-py's Sentinel pool (connections go to the primary Sentinel names) with the
    blocking pool's wait for a free connection; closing it closes the Sentinel clients."""

    def __init__(self, service: str, sentinel: Sentinel, **kwargs: Any) -> None:
        super().__init__(service, sentinel, **kwargs)  # type: ignore[no-untyped-call]

    async def aclose(self) -> None:
        try:
            await super().aclose()
        finally:
            await self.sentinel_manager.aclose()


def retrying(deadline: float = 30.0, doing: str | None = None) -> AsyncRetrying:
    """Exponential backoff with jitter around one I/O call, for transient errors only.

    With ``doing``, each failed attempt is logged as a warning (at most every 5 s, the
    longest wait), so a service waiting for Redis says so instead of looking hung.
    """
    def say(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning("redis unavailable while %s (%s); retrying", doing, exc)

    return AsyncRetrying(
        retry=retry_if_exception_type(TRANSIENT),
        wait=wait_exponential_jitter(initial=0.1, max=5.0),
        stop=stop_after_delay(deadline),
        before_sleep=say if doing else None,
        reraise=True,
    )


async def load_functions(r: aioredis.Redis) -> None:
    """FUNCTION LOAD REPLACE: idempotent, so every replica may do it at start."""
    await r.function_load(FUNCTIONS_CODE, replace=True)
    log.debug("redis functions %s_%s loaded", FUNCTION_LIBRARY, FUNCTIONS_VERSION)


async def fcall(r: aioredis.Redis, name: str, keys: Sequence[str], args: Sequence[Any],
                *, readonly: bool = False) -> Any:
    """FCALL that re-loads the library once if Redis lost it (restart without data)."""
    call = r.fcall_ro if readonly else r.fcall
    name = function_name(name)
    try:
        return await call(name, len(keys), *keys, *args)
    except ResponseError as exc:
        if "Function not found" not in str(exc):
            raise
        log.warning("redis has no %s function (restarted without data?): reloading", name)
        await load_functions(r)
        return await call(name, len(keys), *keys, *args)


async def ensure_group(r: aioredis.Redis, stream: str, group: str) -> None:
    """Create the consumer group (and the stream) from the start; only BUSYGROUP is fine."""
    try:
        await r.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if not str(exc).startswith("BUSYGROUP"):
            raise
