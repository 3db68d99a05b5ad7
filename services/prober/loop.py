"""The prober's loop: follow the inventory, schedule every instance, hand probes to threads.

One asyncio task keeps a heap of (next slot, instance) and hands due probes to the
worker pool; the probe runs in a thread, so a slow, frozen or unreachable instance
holds one thread for at most its timeout and never delays another instance. A
watchdog reports a probe that outlives its deadline as a timeout at the deadline, even
if its thread is stuck (e.g. in a DNS lookup that ignores timeouts).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import threading
import time
from collections import deque
from typing import Any

import msgspec
import redis.asyncio as aioredis

from services.prober import metrics
from services.prober.membership import BACKUP, NONE, OWNER, Membership
from services.prober.probe import Outcome, probe
from services.prober.publish import Publisher
from services.prober.schedule import next_slot
from services.prober.workers import Job, WorkerPool
from shared.inventory import Credential
from shared.keys import Keys
from shared.lifecycle import cancel_and_wait, sleep_or_stop
from shared.redis import TRANSIENT, fcall
from shared.schema import Instance, ProbeResult, instance_decoder
from shared.status import read_inventory

log = logging.getLogger("vigil.prober")
INVENTORY_POLL = 1.0  # seconds between checks of the inventory version
# The event loop wakes on a fixed beat, whatever the number of instances: it dispatches
# every probe that fell due, runs the watchdog and sends the results gathered since the
# last beat. Waking per probe, and being woken by workers per result, cost ~1 ms of CPU
# per probe in GIL hand-offs (measured at 200 probes/s); a beat costs a fixed ~100 wake-
# ups a second and delays a probe's start by at most one beat.
TICK = 0.01
GRACE = 0.05  # seconds past its deadline before the watchdog reports a probe
CLAIM_EVERY = 0.04  # seconds claims gather before one round trip takes them all
BACKUP_DELAY_MS = 1000  # at most: the backup claims a tick this long after it, if untaken
CLAIMER_EXIT = 2.0  # seconds the claimer may take to finish its last round trip on stop
STUCK = 0.05  # a probe running longer than this is waiting on a slow server (healthy: ~1 ms)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Prober:
    def __init__(self, r: aioredis.Redis, keys: Keys, prober_id: str,
                 credentials: dict[str, Credential], publisher: Publisher, workers: int,
                 members: Membership):
        self._r = r
        self._members = members
        self._to_claim: list[tuple[Instance, int]] = []
        self._claim_now = asyncio.Event()
        self._claims_failing = False
        self._stopping = False  # the scheduler stopped: the claimer does one last batch
        self._keys = keys
        self._id = prober_id
        self._creds = credentials
        self._publisher = publisher
        self._pool = WorkerPool(self._run_job, workers)
        self._lock = threading.Lock()
        self._instances: dict[str, Instance] = {}
        # (due ms, generation, id, tick ms): due == tick for the tick itself, later for the
        # backup's second look at a tick its owner may have missed
        self._heap: list[tuple[int, int, str, int]] = []
        self._generation: dict[str, int] = {}  # heap entries of older generations are dropped
        self._seq = 0
        self._running: dict[str, Job] = {}  # in flight (queued or started), by instance id
        self._queued: deque[Job] = deque()  # in dispatch order, to see how long jobs wait
        self._version: bytes | None = None
        self._give_up_at = float("inf")  # monotonic time after which queued jobs are dropped
        self._ok = metrics.PROBES.labels("ok", "")
        self.inventory_seen = False

    # --- inventory ------------------------------------------------------------------------
    async def follow_inventory(self, stop: asyncio.Event) -> None:
        """Poll the inventory version; on a change, add, drop or re-schedule instances."""
        while not stop.is_set():
            try:
                # A cheap GET each time; the whole inventory only when it changed.
                seen: Any = await self._r.get(self._keys.inventory_version)
                if seen is None:
                    # No inventory in Redis (not loaded yet, or Redis lost its data): keep
                    # probing what we have; the state service loads it again.
                    pass
                elif seen != self._version:
                    version, flat = await read_inventory(self._r, self._keys)
                    if version is not None:
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
        for ident in list(self._instances):
            if wanted.get(ident) != self._instances[ident]:
                del self._instances[ident]
                self._generation.pop(ident, None)
        now = now_ms()
        for ident, inst in wanted.items():
            if ident not in self._instances:
                self._instances[ident] = inst
                self._seq += 1
                self._generation[ident] = self._seq
                slot = next_slot(ident, _interval_ms(inst), now)
                heapq.heappush(self._heap, (slot, self._seq, ident, slot))
        self.count_owned()
        log.info("inventory: %d instances", len(self._instances))

    def count_owned(self) -> None:
        metrics.OWNED.set(self._members.owned(self._instances))

    # --- scheduling -------------------------------------------------------------------------
    async def schedule(self, stop: asyncio.Event) -> None:
        """Claim and hand out every due probe this prober owns (or backs up, late)."""
        heap = self._heap
        claimer = asyncio.create_task(self._claimer(), name="claimer")
        try:
            while not stop.is_set():
                now = now_ms()
                while heap and heap[0][0] <= now:
                    due, gen, ident, tick = heapq.heappop(heap)
                    if self._generation.get(ident) != gen:
                        continue  # removed or changed since it was scheduled
                    inst = self._instances[ident]
                    role = self._members.role(ident)
                    if due == tick:
                        heapq.heappush(heap, (nxt := next_slot(
                            ident, _interval_ms(inst), max(tick, now)), gen, ident, nxt))
                        if role == OWNER:
                            self._want(inst, tick)
                        elif role == BACKUP:
                            heapq.heappush(heap, (tick + _backup_delay_ms(inst), gen, ident,
                                                  tick))
                    elif role != NONE:
                        self._want(inst, tick)  # the backup's look: taken only if untaken
                self._watchdog()
                self._publisher.kick()
                if self._to_claim:
                    self._claim_now.set()
                await asyncio.sleep(TICK)
        finally:
            # Let the claimer finish its round trip: ticks it won are ours alone to probe
            # (their backups will find them taken), so they must be dispatched, not dropped
            # by a cancellation landing between the claim and the dispatch.
            self._stopping = True
            self._claim_now.set()
            await asyncio.wait({claimer}, timeout=CLAIMER_EXIT)
            await cancel_and_wait(claimer)

    def _want(self, inst: Instance, tick: int) -> None:
        if inst.id in self._running:
            # The previous probe has not returned: never pile a second one onto it (and
            # do not claim the tick, so the backup may take it).
            metrics.SKIPPED.labels("previous_running").inc()
            return
        self._to_claim.append((inst, tick))

    async def _claimer(self) -> None:
        """Claim wanted ticks in one round trip per CLAIM_EVERY; probe those we win.

        A round trip costs the event loop a few hundred microseconds of Python, so claims
        are gathered for a few beats (a probe starts at most CLAIM_EVERY after its tick;
        the tick it reports stays the slot).
        """
        while True:
            await self._claim_now.wait()
            self._claim_now.clear()
            if not self._stopping:
                await asyncio.sleep(CLAIM_EVERY)
            batch, self._to_claim = self._to_claim, []
            if not batch:
                if self._stopping:
                    return
                continue
            try:
                won = await fcall(self._r, "vigil_claim",
                                  [self._keys.claim(inst.id, tick) for inst, tick in batch],
                                  [self._id, *(2 * _interval_ms(inst) + 1000 for inst, _ in batch)])
                metrics.CLAIM_ROUND_TRIPS.inc()
                if self._claims_failing:
                    log.info("claiming ticks again")
                self._claims_failing = False
            except TRANSIENT as exc:
                # Redis unreachable: owners probe anyway (a duplicate is harmless, the fold
                # keeps one per tick); backups do not, or every prober would.
                if not self._claims_failing:
                    log.warning("cannot claim ticks (%s): probing the instances we own "
                                "until Redis answers", exc)
                self._claims_failing = True
                won = [self._members.role(inst.id) == OWNER for inst, _ in batch]
            horizon = now_ms()
            for (inst, tick), ok in zip(batch, won, strict=True):
                if not ok:
                    metrics.CLAIMS_LOST.inc()
                elif horizon - tick > _interval_ms(inst):
                    metrics.SKIPPED.labels("late").inc()  # the claim took a whole interval
                else:
                    self._dispatch(inst, tick)
            if self._stopping:
                return  # the last batch: claimed and dispatched, the drain runs it

    def _dispatch(self, inst: Instance, tick: int) -> None:
        if inst.id in self._running:
            metrics.SKIPPED.labels("previous_running").inc()
            return
        job = Job(inst, tick, time.monotonic())
        self._running[inst.id] = job
        self._queued.append(job)
        self._pool.submit(job)

    def _watchdog(self) -> None:
        now = time.monotonic()
        queued = self._queued
        while queued and (queued[0].started or queued[0].done):
            queued.popleft()
        stuck = 0
        for job in list(self._running.values()):
            if not job.started or job.done:
                continue
            if now > job.started + STUCK:
                stuck += 1
            if now > job.started + job.inst.timeout + GRACE and self._claim(job):
                self._report(job, Outcome(False, round(job.inst.timeout * 1000, 3), "timeout",
                                          f"no answer within {job.inst.timeout:g}s"))
        self._pool.maybe_grow(now - queued[0].queued if queued else 0.0, stuck)

    def _claim(self, job: Job) -> bool:
        """True for the first caller only: the watchdog or the worker reports, never both."""
        with self._lock:
            first = not job.done
            job.done = True
        return first

    # --- in a worker thread -----------------------------------------------------------------
    def _run_job(self, job: Job) -> None:
        inst = job.inst
        start = time.monotonic()
        job.started = start
        outcome: Outcome | None = None
        if start - job.queued <= inst.interval and start < self._give_up_at:
            outcome = probe(inst, self._creds.get(inst.credentials), start + inst.timeout)
        first = self._claim(job)
        with self._lock:
            if self._running.get(inst.id) is job:
                del self._running[inst.id]
        if outcome is None:
            # No thread was free for a whole interval (or the drain ran out of time): not the
            # instance's fault, so no result rather than a false failure.
            metrics.SKIPPED.labels("no_worker").inc()
        elif first:
            self._report(job, outcome)

    def _report(self, job: Job, outcome: Outcome) -> None:
        if outcome.ok:
            self._ok.inc()
            metrics.LATENCY.observe(outcome.latency_ms / 1000)
        else:
            metrics.PROBES.labels("error", outcome.reason or "unknown").inc()
        self._publisher.put(ProbeResult(
            instance=job.inst.id, prober=self._id, tick=job.tick, at=now_ms(), ok=outcome.ok,
            latency_ms=outcome.latency_ms, reason=outcome.reason,  # type: ignore[arg-type]
            message=outcome.message,
        ))

    # --- shutdown ---------------------------------------------------------------------------
    async def drain(self, grace: float) -> None:
        """No new probes; run those already claimed (bounded by ``grace``); free the threads.

        A dispatched job holds its tick's claim, so its backup will not probe it: it runs
        even now, unless the grace period is over.
        """
        deadline = self._give_up_at = time.monotonic() + grace
        while self._running and time.monotonic() < deadline:
            self._watchdog()
            await asyncio.sleep(0.02)
        if self._running:
            log.warning("%d probes still running after the grace period", len(self._running))
        self._pool.close()


def _interval_ms(inst: Instance) -> int:
    return max(1, round(inst.interval * 1000))


def _backup_delay_ms(inst: Instance) -> int:
    """When the backup looks at a tick: late enough for the owner, early in the interval."""
    return min(_interval_ms(inst) // 2, BACKUP_DELAY_MS)
