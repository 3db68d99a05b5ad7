"""Loading the inventory file into Redis, at start and whenever the file changes.

Idempotent: the Function compares content digests, so several replicas loading the
same file write nothing twice. A bad file is refused whole and the last good
inventory stays in force.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

import redis.asyncio as aioredis

from services.state import metrics
from shared.errors import ConfigError
from shared.inventory import digest, load_inventory
from shared.keys import Keys
from shared.redis import TRANSIENT, fcall
from shared.schema import Instance, encoder

log = logging.getLogger("vigil.state.inventory")
WATCH_INTERVAL = 2.0
SETTLE = 1.0  # seconds a changed file must stay unchanged before it is read


class InventoryLoader:
    def __init__(self, path: str, keys: Keys):
        self.path = path
        self._keys = keys
        self._instances: list[Instance] = []
        self._digest = ""
        self._stamp: tuple[float, int] | None = None
        self._refused = False  # the file on disk was refused; the last good one is in force

    def _file_stamp(self) -> tuple[float, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime, st.st_size

    def load_file(self) -> bool:
        """Read and validate the file; True when its content changed. ConfigError if bad."""
        self._stamp = self._file_stamp()
        instances = load_inventory(self.path)
        new = digest(instances)
        changed = new != self._digest
        self._instances, self._digest = instances, new
        return changed

    async def sync(self, r: aioredis.Redis) -> None:
        """Write the inventory to Redis unless Redis already has this exact content."""
        args: list[str | bytes] = [self._digest]
        for inst in self._instances:
            args += [inst.id, encoder.encode(inst)]
        wrote = await fcall(r, "vigil_sync_inventory", self._keys.inventory_keys(), args)
        if wrote:
            metrics.INVENTORY_LOADS.inc()
            log.info("inventory %s loaded into redis: %d instances", self._digest,
                     len(self._instances))

    async def watch(self, r: aioredis.Redis, stop: asyncio.Event) -> None:
        """Reload on file change; re-sync when Redis lost it (a restart without data)."""
        while not stop.is_set():
            await asyncio.sleep(WATCH_INTERVAL)
            try:
                stamp = self._file_stamp()
                if stamp != self._stamp and stamp is not None and time.time() - stamp[0] < SETTLE:
                    continue  # written moments ago, maybe not finished: look again next time
                if stamp != self._stamp:
                    try:
                        if self.load_file():
                            log.info("inventory file changed: reloading")
                        elif self._refused:
                            log.info("inventory file is valid again (same content as in force)")
                        self._refused = False
                    except ConfigError as exc:
                        metrics.INVENTORY_ERRORS.inc()
                        self._refused = True
                        log.error("inventory file refused, keeping the last good one:\n  %s",
                                  "\n  ".join(exc.problems))
                        continue
                if await r.get(self._keys.inventory_version) != self._digest.encode():
                    await self.sync(r)
            except TRANSIENT as exc:
                log.warning("cannot check the inventory in redis: %s", exc)
            except Exception:
                log.exception("inventory watch failed; carrying on")
