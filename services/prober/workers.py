"""Worker threads that run blocking probes, sized by what the work needs.

Probes are queued as Jobs and run by long-lived threads; no asyncio object is
touched per probe. One thread serves healthy servers, and up to three when jobs queue
up (a probe costs ~0.5 ms of CPU; more threads only fight for the GIL: measured here,
a bare pymysql loop does 1,020 probes/s on 1 thread, 1,410 on 2 and 670 on 64, and at
200 probes/s three threads cost 0.78 ms of CPU per probe where one costs 0.5). The pool
adds one thread for each probe stuck on a slow or silent server, so those never hold
up the others, and idle threads retire after a while.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from services.prober.metrics import WORKERS_BUSY, WORKERS_MAX
from shared.schema import Instance

log = logging.getLogger("vigil.prober.workers")
GROW_AFTER = 0.05  # seconds a job may wait for a thread before another is considered
IDLE_RETIRE = 30.0  # seconds an extra thread may sit idle before it exits
FAST_LANE = 3  # at most this many threads for healthy servers, beside one per stuck probe


@dataclass(eq=False, slots=True)
class Job:
    inst: Instance
    tick: int
    queued: float  # time.monotonic() when queued
    started: float = 0.0  # when a worker picked it up; 0 while queued
    done: bool = False  # set (under the prober's lock) by whoever reports the result first


class WorkerPool:
    def __init__(self, run: Callable[[Job], None], max_workers: int, min_workers: int = 1):
        self._run = run
        self._max = max(1, max_workers)
        self._min = max(1, min(min_workers, self._max))
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0
        self._fast = self._min  # threads the healthy servers need, grown when jobs queue
        for _ in range(self._min):
            self._spawn()
        WORKERS_MAX.set(self._max)
        WORKERS_BUSY.set_function(self.busy)

    def busy(self) -> int:
        """Threads running a probe now."""
        with self._lock:
            return self._threads - self._idle

    @property
    def size(self) -> int:
        return self._threads

    def submit(self, job: Job) -> None:
        self._jobs.put(job)

    def maybe_grow(self, oldest_wait: float, stuck: int) -> None:
        """Called by the scheduler: how long the oldest queued job waited, how many are stuck.

        A stuck probe (on a slow or silent server) holds a thread while using no CPU, so
        it earns a thread of its own; a merely busy pool does not grow, since more
        threads would only contend for the GIL.
        """
        if oldest_wait > GROW_AFTER and self._fast < FAST_LANE:
            self._fast += 1
        want = min(self._max, self._fast + stuck)
        while oldest_wait > GROW_AFTER and self._threads < want:
            self._spawn()

    def _spawn(self) -> None:
        with self._lock:
            self._threads += 1
            n = self._threads
        threading.Thread(target=self._loop, name=f"probe-{n}", daemon=True).start()

    def _loop(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            try:
                job = self._jobs.get(timeout=IDLE_RETIRE)
            except queue.Empty:
                with self._lock:
                    self._idle -= 1
                    if self._threads > self._min:
                        self._threads -= 1
                        return
                continue
            with self._lock:
                self._idle -= 1
            if job is None:
                with self._lock:
                    self._threads -= 1
                return
            try:
                self._run(job)
            except Exception:
                log.exception("probe worker error (instance %s)", job.inst.id)

    def close(self) -> None:
        """Ask every thread to exit once the queue ahead of it is done; does not wait."""
        for _ in range(self._threads):
            self._jobs.put(None)
