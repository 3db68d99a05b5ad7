"""Publishing probe results: a bounded buffer flushed to the probes stream in batches.

Worker threads append encoded results; the scheduler's beat kicks the publisher, which
sends them once 50 ms have passed since the oldest one (or a few hundred gathered) in
one call of the ``vigil_publish`` Function. A Redis command costs the event loop a few
hundred microseconds of Python: per result that was most of the prober's own CPU; per
batch it is noise. Results reach the stream at most ~60 ms after their probe ended.

Failing to publish is not a failed probe: while Redis is away, results wait here
(oldest dropped first when the buffer is full; newer results supersede them anyway)
and go out in order once Redis answers again.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque

import redis.asyncio as aioredis

from services.prober import metrics
from shared.keys import Keys
from shared.redis import TRANSIENT, fcall
from shared.schema import ProbeResult, encoder

log = logging.getLogger("vigil.prober.publish")
BATCH = 1000
LINGER = 0.05  # seconds the oldest buffered result may wait for company
EAGER = 200  # ...unless this many are waiting


class Publisher:
    def __init__(self, r: aioredis.Redis, keys: Keys, maxlen: int, capacity: int = 100_000):
        self._r = r
        self._stream = keys.probes
        self._maxlen = maxlen
        self._buf: deque[bytes] = deque(maxlen=capacity)
        self._wake = asyncio.Event()
        self._oldest = 0.0
        self._closing = False
        self.healthy = True

    def put(self, result: ProbeResult) -> None:
        """Queue a result; safe from any thread (deque appends are atomic)."""
        if not self._buf:
            self._oldest = time.monotonic()  # racy between threads, harmlessly: a hint
        elif len(self._buf) == self._buf.maxlen:
            metrics.DROPPED.inc()
        self._buf.append(encoder.encode(result))

    def kick(self) -> None:
        """From the event loop: send the buffer once it is old or large enough."""
        if self._buf and (len(self._buf) >= EAGER
                          or time.monotonic() - self._oldest >= LINGER or self._closing):
            self._wake.set()

    def __len__(self) -> int:
        return len(self._buf)

    def close(self) -> None:
        """Flush what is buffered, then let run() return."""
        self._closing = True
        self._wake.set()

    async def run(self) -> None:
        failures = 0
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._buf:
                n = min(len(self._buf), BATCH)
                batch = [self._buf.popleft() for _ in range(n)]
                try:
                    # One Function call XADDs the whole batch: packing one command per
                    # result in the client cost more than the probes' own bookkeeping.
                    await fcall(self._r, "vigil_publish", [self._stream],
                                [self._maxlen, b"\n".join(batch)])
                except TRANSIENT as exc:
                    # Put the batch back in front, in order. If the call did run and only
                    # its reply was lost, the duplicates are harmless: the fold ignores
                    # ticks it has seen.
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
                metrics.PUBLISHED.inc(n)
                metrics.BUFFERED.set(len(self._buf))
            if self._closing:
                return
