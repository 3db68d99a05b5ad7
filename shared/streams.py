"""Consumer-group mechanics in one place: own pending entries first, then new ones.

A restarted consumer (stable name = pod name) first re-reads what it was given
but never acked (id ``0``), then reads new entries (``>``). Entries idle on dead
consumers are taken over by XAUTOCLAIM.
"""

from __future__ import annotations

import logging
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from shared.redis import ensure_group

log = logging.getLogger("vigil.streams")
Entry = tuple[bytes, dict[bytes, bytes] | None]


def _sid(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)


class GroupReader:
    def __init__(self, r: aioredis.Redis, stream: str, group: str, consumer: str,
                 count: int = 500, block_ms: int = 1000):
        self._r = r
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self._count = count
        self._block = block_ms
        self._pending = True  # start with our own pending entries

    async def read(self) -> list[Entry]:
        """The next batch: own pending entries until none are left, then new ones."""
        while True:
            start = "0" if self._pending else ">"
            try:
                reply: Any = await self._r.xreadgroup(
                    self.group, self.consumer, {self.stream: start}, count=self._count,
                    block=None if self._pending else self._block,
                )
            except ResponseError as exc:
                if not str(exc).startswith("NOGROUP"):
                    raise
                # Redis lost the group (restart without data): re-create it and start over.
                log.warning("consumer group %s on %s is gone: re-creating it", self.group,
                            self.stream)
                await ensure_group(self._r, self.stream, self.group)
                self._pending = True
                continue
            entries: list[Entry] = reply[0][1] if reply else []
            if self._pending and not entries:
                self._pending = False
                log.info("own pending entries done; reading new ones")
                continue
            return entries

    async def deliveries(self, ids: list[bytes]) -> dict[bytes, int]:
        """How often each of ``ids`` (pending on this consumer) was delivered."""
        if not ids:
            return {}
        rows: Any = await self._r.xpending_range(
            self.stream, self.group, min=min(ids, key=_sid), max=max(ids, key=_sid),
            count=len(ids) + 100, consumername=self.consumer)
        wanted = set(ids)
        return {row["message_id"]: int(row["times_delivered"]) for row in rows
                if row["message_id"] in wanted}

    async def forget_dead(self, min_idle_ms: int) -> list[str]:
        """Delete consumers with nothing pending that have not read for ``min_idle_ms``.

        Only after their entries were claimed (nothing pending), so nothing is lost; a live
        replica reads every second, so it is never this idle.
        """
        rows: Any = await self._r.xinfo_consumers(self.stream, self.group)
        gone = []
        for row in rows:
            name = row["name"].decode() if isinstance(row["name"], bytes) else str(row["name"])
            if name != self.consumer and int(row["pending"]) == 0 and \
                    int(row["idle"]) > min_idle_ms:
                await self._r.xgroup_delconsumer(self.stream, self.group, name)
                gone.append(name)
        return gone

    async def claim_idle(self, min_idle_ms: int, count: int = 500) -> list[Entry]:
        """XAUTOCLAIM entries idle longer than ``min_idle_ms`` on any consumer (dead ones)."""
        reply: Any = await self._r.xautoclaim(self.stream, self.group, self.consumer,
                                              min_idle_time=min_idle_ms, start_id="0-0",
                                              count=count)
        # Redis 7 replies [next, entries, deleted ids]; deleted ids were acked by Redis.
        return list(reply[1]) if len(reply) > 1 else []
