"""Who probes what: live probers in Redis, rendezvous hashing, and per-tick claims.

Every prober heartbeats into a sorted set whose scores are expiry times taken from
Redis' clock (no trust in the pods' clocks); members that miss their heartbeats drop
out, and a prober that gets SIGTERM leaves at once. Each instance has an owner and a
backup: the two live probers that rank highest for it by rendezvous (highest random
weight) hashing, so adding or removing one prober moves only about 1/N of the
instances. The owner claims (instance, tick) at the tick with ``SET NX PX``; the backup
tries the same claim a little later, so a dead owner's instances are probed within the
same interval, and exactly one probe runs per tick even while members come and go.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from typing import Any

import redis.asyncio as aioredis

from shared.keys import Keys
from shared.redis import fcall

log = logging.getLogger("vigil.prober.membership")
HEARTBEAT = 1.0  # seconds between heartbeats
EXPIRY = 3.0  # a prober missing heartbeats this long is no longer a member
OWNER, BACKUP, NONE = 0, 1, 2


def weight(member: str, instance_id: str) -> bytes:
    return hashlib.blake2b(f"{member}\0{instance_id}".encode(), digest_size=8).digest()


def ranking(members: Iterable[str], instance_id: str) -> list[str]:
    """Members in rendezvous order for ``instance_id``: the owner first, then the backup."""
    return sorted(members, key=lambda m: weight(m, instance_id), reverse=True)


class Membership:
    def __init__(self, r: aioredis.Redis, keys: Keys, me: str):
        self._r = r
        self._keys = keys
        self.me = me
        self.members: tuple[str, ...] = (me,)
        self._roles: dict[str, int] = {}

    def role(self, instance_id: str) -> int:
        """OWNER, BACKUP or NONE for this prober, under the current membership."""
        role = self._roles.get(instance_id)
        if role is None:
            ranked = ranking(self.members, instance_id)
            role = OWNER if ranked[0] == self.me else (
                BACKUP if len(ranked) > 1 and ranked[1] == self.me else NONE)
            self._roles[instance_id] = role
        return role

    def owned(self, instance_ids: Iterable[str]) -> int:
        return sum(1 for i in instance_ids if self.role(i) == OWNER)

    async def heartbeat(self) -> bool:
        """Renew our membership; True when the set of members changed."""
        raw: Any = await fcall(self._r, "vigil_heartbeat", [self._keys.probers],
                               [self.me, int(EXPIRY * 1000)])
        members = tuple(sorted({m.decode() if isinstance(m, bytes) else str(m) for m in raw}
                               | {self.me}))
        if members == self.members:
            return False
        log.info("probers: %s", ", ".join(members))
        self.members = members
        self._roles.clear()  # recomputed lazily, instance by instance
        return True

    async def leave(self) -> None:
        """On SIGTERM: drop out now, so the others take our instances at once."""
        await self._r.zrem(self._keys.probers, self.me)
