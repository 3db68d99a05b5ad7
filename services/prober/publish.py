"""Publishing probe results: a bounded buffer flushed to the probes stream in pipelined batches.

Failing to publish is not a failed probe: while Redis is away, results wait here
(oldest dropped first when the buffer is full; newer results supersede them anyway)
and go out once Redis answers again.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque

import redis.asyncio as aioredis

from services.prober import metrics
from shared.keys import Keys
from shared.redis import TRANSIENT
from shared.schema import ProbeResult, encoder

log = logging.getLogger("vigil.prober.publish")
BATCH = 500


class Publisher:
    def __init__(self, r: aioredis.Redis, keys: Keys, maxlen: int, capacity: int = 100_000):
        self._r = r
        self._stream = keys.probes
        self._maxlen = maxlen
        self._buf: deque[bytes] = deque(maxlen=capacity)
        self._wake = asyncio.Event()
        self.healthy = True

    def put(self, result: ProbeResult) -> None:
        if len(self._buf) == self._buf.maxlen:
            metrics.DROPPED.inc()
        self._buf.append(encoder.encode(result))
        self._wake.set()

    def __len__(self) -> int:
        return len(self._buf)

    async def run(self, closing: asyncio.Event) -> None:
        """Flush until ``closing`` is set and the buffer is empty (or the task is cancelled)."""
        failures = 0
        while True:
            if not self._buf:
                if closing.is_set():
                    return
                self._wake.clear()
                waiter = asyncio.ensure_future(self._wake.wait())
                closer = asyncio.ensure_future(closing.wait())
                await asyncio.wait({waiter, closer}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                closer.cancel()
                continue
            batch = [self._buf.popleft() for _ in range(min(len(self._buf), BATCH))]
            metrics.BUFFERED.set(len(self._buf))
            try:
                async with self._r.pipeline(transaction=False) as pipe:
                    for data in batch:
                        pipe.xadd(self._stream, {"data": data}, maxlen=self._maxlen,
                                  approximate=True)
                    await pipe.execute()
            except TRANSIENT as exc:
                # Put the batch back in front, keeping order; a duplicate XADD after a
                # half-applied pipeline is harmless: the fold ignores results it has seen.
                free = (self._buf.maxlen or 0) - len(self._buf)
                keep = batch[-free:] if free < len(batch) else batch
                metrics.DROPPED.inc(len(batch) - len(keep))
                self._buf.extendleft(reversed(keep))
                metrics.PUBLISH_ERRORS.inc()
                failures += 1
                self.healthy = False
                delay = min(5.0, 0.05 * 2 ** min(failures, 10)) * random.uniform(0.5, 1.5)
                log.warning("cannot publish %d results (%s); retrying in %.2fs",
                            len(self._buf), exc, delay)
                await asyncio.sleep(delay)
                continue
            if failures:
                log.info("publishing again after %d failed attempts", failures)
            failures = 0
            self.healthy = True
            metrics.PUBLISHED.inc(len(batch))
