"""The prober's loop: follow the inventory, schedule each instance, run probes in threads.

One asyncio task per instance sleeps until its next slot and starts a probe; the
probe itself runs in a worker thread, so a slow, frozen or unreachable instance
holds one thread for at most its timeout and never delays another instance.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import msgspec
import redis.asyncio as aioredis

from services.prober import metrics
from services.prober.probe import Outcome, probe
from services.prober.publish import Publisher
from services.prober.schedule import next_slot
from shared.inventory import Credential
from shared.keys import Keys
from shared.lifecycle import sleep_or_stop
from shared.redis import TRANSIENT
from shared.schema import Instance, ProbeResult, instance_decoder
from shared.status import read_inventory

log = logging.getLogger("vigil.prober")
INVENTORY_POLL = 1.0  # seconds between checks of the inventory version


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class _Started:
    """Set by the worker thread when it picks the probe up (a plain attribute write)."""

    __slots__ = ("at",)

    def __init__(self) -> None:
        self.at: float | None = None


class Prober:
    def __init__(self, r: aioredis.Redis, keys: Keys, prober_id: str,
                 credentials: dict[str, Credential], publisher: Publisher, workers: int):
        self._r = r
        self._keys = keys
        self._id = prober_id
        self._creds = credentials
        self._publisher = publisher
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="probe")
        self._schedules: dict[str, tuple[Instance, asyncio.Task[None]]] = {}
        self._probes: set[asyncio.Task[None]] = set()
        self._inflight: set[str] = set()
        self._version: bytes | None = None
        self._closed = False
        self.inventory_seen = False

    # --- inventory ------------------------------------------------------------------------
    async def follow_inventory(self, stop: asyncio.Event) -> None:
        """Poll the inventory version; on a change, start, stop or restart schedules."""
        while not stop.is_set():
            try:
                version, flat = await read_inventory(self._r, self._keys)
                if version != self._version or not self.inventory_seen:
                    self._reconcile(flat)
                    self._version = version
                self.inventory_seen = True
            except TRANSIENT as exc:
                log.warning("cannot read the inventory from redis: %s", exc)
            except Exception:
                log.exception("inventory follow failed; will retry")
            await sleep_or_stop(stop, INVENTORY_POLL)

    def _reconcile(self, flat: dict[str, bytes]) -> None:
        wanted: dict[str, Instance] = {}
        for ident, raw in flat.items():
            try:
                wanted[ident] = instance_decoder.decode(raw)
            except msgspec.DecodeError as exc:
                log.error("inventory entry %r in redis is invalid, skipped: %s", ident, exc)
        for ident, (inst, task) in list(self._schedules.items()):
            if wanted.get(ident) != inst:
                task.cancel()
                del self._schedules[ident]
        for ident, inst in wanted.items():
            if ident not in self._schedules:
                task = asyncio.create_task(self._schedule(inst), name=f"schedule:{ident}")
                self._schedules[ident] = (inst, task)
        metrics.OWNED.set(len(self._schedules))
        log.info("inventory: %d instances", len(self._schedules))

    # --- scheduling -------------------------------------------------------------------------
    async def _schedule(self, inst: Instance) -> None:
        interval_ms = max(1, round(inst.interval * 1000))
        slot = next_slot(inst.id, interval_ms, now_ms())
        while True:
            await asyncio.sleep(max(0.0, (slot - now_ms()) / 1000))
            if inst.id in self._inflight:
                # The previous probe has not returned (e.g. a DNS lookup that ignores
                # timeouts): never pile a second probe onto the same instance.
                metrics.SKIPPED.labels("previous_running").inc()
            else:
                task = asyncio.create_task(self._probe(inst, slot))
                self._probes.add(task)
                task.add_done_callback(self._probes.discard)
            slot = next_slot(inst.id, interval_ms, max(slot, now_ms()))

    async def _probe(self, inst: Instance, tick: int) -> None:
        self._inflight.add(inst.id)
        started = _Started()
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._pool, self._run_in_thread, inst, started)
        fut.add_done_callback(lambda _: self._inflight.discard(inst.id))
        # Wait the probe's timeout; if it only just got a worker, give it its full budget.
        await asyncio.wait({fut}, timeout=inst.timeout + 0.05)
        if not fut.done() and started.at is not None:
            left = started.at + inst.timeout + 0.05 - time.monotonic()
            if left > 0:
                await asyncio.wait({fut}, timeout=left)
        outcome: Outcome | None
        if fut.done():
            outcome = fut.result()
        elif started.at is None:
            outcome = None  # no worker free all along: not the instance's fault
        else:
            outcome = Outcome(False, round(inst.timeout * 1000, 3), "timeout",
                              f"no answer within {inst.timeout:g}s")
        if outcome is None:
            metrics.SKIPPED.labels("no_worker").inc()
            return
        if outcome.ok:
            metrics.PROBES.labels("ok", "").inc()
            metrics.LATENCY.observe(outcome.latency_ms / 1000)
        else:
            metrics.PROBES.labels("error", outcome.reason or "unknown").inc()
        self._publisher.put(ProbeResult(
            instance=inst.id, prober=self._id, tick=tick, at=now_ms(), ok=outcome.ok,
            latency_ms=outcome.latency_ms, reason=outcome.reason,  # type: ignore[arg-type]
            message=outcome.message,
        ))

    def _run_in_thread(self, inst: Instance, started: _Started) -> Outcome | None:
        now = time.monotonic()
        if self._closed:
            return None  # queued before shutdown: nobody waits for it any more
        started.at = now
        return probe(inst, self._creds.get(inst.credentials), now + inst.timeout)

    # --- shutdown ---------------------------------------------------------------------------
    async def drain(self, grace: float) -> None:
        """Stop scheduling, let in-flight probes finish (bounded by ``grace``), free threads."""
        for _, task in self._schedules.values():
            task.cancel()
        await asyncio.gather(*(t for _, t in self._schedules.values()), return_exceptions=True)
        self._schedules.clear()
        if self._probes:
            log.info("waiting for %d in-flight probes", len(self._probes))
            _, pending = await asyncio.wait(set(self._probes), timeout=grace)
            for task in pending:
                task.cancel()
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
