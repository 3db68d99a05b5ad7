"""Detection under a frozen neighbour: Vigil and the baseline poller, side by side.

50 instances: 48 on a healthy MariaDB (H), one on a server that gets frozen with SIGSTOP
(F), one on a server that is killed and restarted (T). Vigil (state, prober, gateway) and
the :class:`~tests.bench.baseline.BaselineMonitor` watch the same 50 at the same time.
Phase A kills and restarts T with F healthy; phase B does the same with F frozen. Each wait
is capped, and what was not seen within the cap is reported as such.
"""

from __future__ import annotations

import json
import random
import statistics
import threading
import time
from collections.abc import Sequence
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.bench.baseline import BaselineMonitor, Target
from tests.bench.env import Bench
from tests.bench.report import mmm, table
from tests.support.servers import MariaDB
from tests.support.wait import free_port

INTERVAL, TIMEOUT, RISE, FALL = 5.0, 3.0, 1, 2  # Vigil's defaults
N_HEALTHY = 48
F_ID, T_ID = "frozen-f", "target-t"
SOURCES = ("vigil", "baseline")
NORMAL_CAP = 30.0  # phase A: both monitors detect well within it; a wait ends when both did


class Events:
    """Status changes seen by each monitor: (source, instance, to, time.monotonic())."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._seen: list[tuple[str, str, str, float]] = []
        self.status: dict[str, dict[str, str]] = {s: {} for s in SOURCES}

    def add(self, source: str, instance: str, to: str, at: float) -> None:
        with self._cond:
            self._seen.append((source, instance, to, at))
            self.status[source][instance] = to
            self._cond.notify_all()

    def set_all(self, source: str, statuses: dict[str, str]) -> None:
        with self._cond:
            self.status[source] = dict(statuses)
            self._cond.notify_all()

    def first(self, source: str, instance: str, to: str, after: float) -> float | None:
        with self._cond:
            return self._first(source, instance, to, after)

    def _first(self, source: str, instance: str, to: str, after: float) -> float | None:
        for s, i, t, at in self._seen:
            if s == source and i == instance and t == to and at >= after:
                return at
        return None

    def wait(self, source: str, instance: str, to: str, after: float,
             deadline: float) -> float | None:
        """When ``source`` first saw ``instance`` go ``to`` at/after ``after``; None by deadline."""
        with self._cond:
            while True:
                found = self._first(source, instance, to, after)
                left = deadline - time.monotonic()
                if found is not None or left <= 0:
                    return found
                self._cond.wait(left)

    def wait_all(self, source: str, ids: Sequence[str], status: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if all(self.status[source].get(i) == status for i in ids):
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)


class VigilWatcher:
    """A WebSocket client in a thread of this process, feeding Vigil's frames to ``events``."""

    def __init__(self, url: str, events: Events) -> None:
        self.url = url
        self.events = events
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vigil-ws", daemon=True)

    def start(self, timeout: float = 15.0) -> None:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"no snapshot from {self.url} within {timeout:g}s: {self.error}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        try:
            with connect(self.url, max_size=2**24, open_timeout=10) as ws:
                while not self._stop.is_set():
                    try:
                        raw = ws.recv(timeout=0.5)
                    except TimeoutError:
                        continue
                    at = time.monotonic()
                    msg = json.loads(raw)
                    if msg.get("type") == "snapshot":
                        self.events.set_all("vigil", {i["id"]: i["status"]
                                                      for i in msg["instances"]})
                        self._ready.set()
                    elif msg.get("type") == "transition":
                        self.events.add("vigil", msg["instance"], msg["to"], at)
        except ConnectionClosed as exc:
            if not self._stop.is_set():
                self.error = exc
        except BaseException as exc:
            self.error = exc


def _cycle(t_db: MariaDB, events: Events, rng: random.Random, cap_error: float,
           cap_running: float, desync: tuple[float, float],
           settled: bool = False) -> dict[str, list[float | None]]:
    """Kill -9 T, wait (capped) for both monitors' ``error``; start T, the same for ``running``.

    Before the kill and the start, a random sleep of ``desync`` (fractions of the interval)
    desynchronises them from both monitors' probe phases; ``settled``: no sleep before the
    kill (the caller just waited for something unrelated to the phases).
    """
    out: dict[str, list[float | None]] = {}
    if not settled:
        time.sleep(INTERVAL * rng.uniform(*desync))
    t0 = time.monotonic()
    t_db.kill()  # the real stop moment: SIGKILL, reaped
    for src in SOURCES:
        seen = events.wait(src, T_ID, "error", t0, t0 + cap_error)
        out[f"{src}_error"] = [None if seen is None else seen - t0]
    time.sleep(INTERVAL * rng.uniform(*desync))
    t_db.start()  # returns once the server accepts logins: the real start moment
    t2 = time.monotonic()
    for src in SOURCES:
        seen = events.wait(src, T_ID, "running", t2, t2 + cap_running)
        out[f"{src}_running"] = [None if seen is None else seen - t2]
    return out


def _merge(into: dict[str, list[float | None]], more: dict[str, list[float | None]]) -> None:
    for k, v in more.items():
        into.setdefault(k, []).extend(v)



def run(bench: Bench, cycles: int = 3, cap_error: float = INTERVAL * FALL + TIMEOUT + 5,
        cap_running: float = INTERVAL * RISE + TIMEOUT + 5,
        desync: tuple[float, float] = (0.2, 1.0), seed: int = 11) -> dict[str, Any]:
    """Phase A (no freeze) then phase B (F frozen), ``cycles`` kill/start cycles of T each.

    ``cap_error`` / ``cap_running``: how long phase B waits for each monitor after the kill
    and after the start (the baseline, stuck on F, needs the whole cap every time).
    """
    h_db, f_db, t_db = bench.mariadb(), bench.mariadb(), bench.mariadb()
    ids = [f"h{i:02d}" for i in range(N_HEALTHY)]
    # The baseline walks them in this order; F and T sit among the healthy ones.
    ids.insert(16, F_ID)
    ids.insert(33, T_ID)
    where = {F_ID: f_db, T_ID: t_db}
    instances = [{"id": i, "host": where.get(i, h_db).host, "port": where.get(i, h_db).port}
                 for i in ids]
    prefix = f"frz{free_port()}"
    inv = bench.inventory(prefix, instances, {"interval": INTERVAL, "timeout": TIMEOUT,
                                              "rise": RISE, "fall": FALL})
    env = bench.env(prefix, inv, h_db)
    for name in ("state", "prober", "gateway"):
        bench.service(name, env)
    port = int(env["VIGIL_GATEWAY_PORT"])
    bench.wait_ready(port, prefix)

    events = Events()
    watcher = VigilWatcher(f"ws://127.0.0.1:{port}/ws", events)
    watcher.start()
    targets = [Target(i, where.get(i, h_db).host, where.get(i, h_db).port, h_db.user,
                      h_db.password) for i in ids]
    baseline = BaselineMonitor(targets, lambda i, _old, new, at: events.add("baseline", i,
                                                                            new, at))
    baseline.start()
    rng = random.Random(seed)
    phases: dict[str, dict[str, list[float | None]]] = {"none": {}, "frozen": {}}
    freeze_at: float | None = None
    stuck_after: float | None = None
    try:
        for src in SOURCES:
            if not events.wait_all(src, ids, "running", 30):
                raise RuntimeError(f"{src}: not all instances running after 30s: "
                                   f"{events.status[src]}")
        for _ in range(cycles):
            _merge(phases["none"], _cycle(t_db, events, rng, NORMAL_CAP, NORMAL_CAP, desync))
        pass_seconds = statistics.median(baseline.pass_seconds or [0.0])
        f_db.freeze()
        freeze_at = time.monotonic()
        # The baseline reaches F within one pass and a sleep, then hangs there for good.
        # Wait for that, so that phase B measures the frozen state and not a lucky race.
        deadline = freeze_at + 2 * (INTERVAL + pass_seconds) + 5
        while time.monotonic() < deadline:
            probing = baseline.probing
            # Inside F's probe for longer than any healthy probe takes (~0.1 s).
            if probing is not None and probing[0] == F_ID and (
                    time.monotonic() - probing[1] > 0.5):
                stuck_after = time.monotonic() - freeze_at
                break
            time.sleep(0.05)
        for n in range(cycles):
            _merge(phases["frozen"], _cycle(t_db, events, rng, cap_error, cap_running, desync,
                                            settled=n == 0))
        f_vigil = events.first("vigil", F_ID, "error", freeze_at)
        f_base = events.first("baseline", F_ID, "error", freeze_at)
        frozen_for = time.monotonic() - freeze_at
    finally:
        if f_db.frozen:
            f_db.thaw()
        baseline.stop()
        watcher.stop()
    if watcher.error is not None:
        raise RuntimeError(f"the WebSocket client failed: {watcher.error!r}")
    return {
        "cycles": cycles, "cap_error": cap_error, "cap_running": cap_running,
        "phases": phases, "pass_seconds": pass_seconds, "stuck_after": stuck_after,
        "frozen_for": frozen_for,
        "f_vigil": None if f_vigil is None else f_vigil - freeze_at,
        "f_baseline": None if f_base is None else f_base - freeze_at,
    }


def _cell(values: Sequence[float | None], cap: float) -> str:
    seen = [v for v in values if v is not None]
    missed = len(values) - len(seen)
    if not missed:
        return mmm(seen, "{:.2f}")
    text = f"not detected in {missed} of {len(values)} within {cap:g} s"
    return f"{mmm(seen, '{:.2f}')} ({text})" if seen else text


def _ratio(base: Sequence[float | None], vigil: Sequence[float | None]) -> str:
    b = [v for v in base if v is not None]
    v = [x for x in vigil if x is not None]
    if len(b) < len(base) or len(v) < len(vigil) or not b or not v:
        return "—"
    return f"{statistics.median(b) / statistics.median(v):.2f}x"


def _within(normal: Sequence[float | None], frozen: Sequence[float | None],
            slack: float) -> bool:
    """Every frozen-phase detection happened, none later than the normal worst + slack."""
    if not frozen or any(v is None for v in frozen) or any(v is None for v in normal):
        return False
    return max(v for v in frozen if v is not None) <= (
        max(v for v in normal if v is not None) + slack)


def section(bench: Bench, quick: bool) -> str:
    if quick:
        # Caps at Vigil's own worst-case bounds, shorter random offsets.
        r = run(bench, cycles=1, cap_error=INTERVAL * FALL + TIMEOUT,
                cap_running=INTERVAL * RISE + TIMEOUT, desync=(0.0, 0.2))
    else:
        r = run(bench, cycles=3)
    ph = r["phases"]
    rows = []
    for src, label in (("vigil", "Vigil"), ("baseline", "baseline")):
        for phase, neighbour in (("none", "no frozen neighbour"),
                                 ("frozen", "frozen neighbour")):
            d = ph[phase]
            ratio = "—" if src == "vigil" else (
                f"{_ratio(d['baseline_error'], d['vigil_error'])} / "
                f"{_ratio(d['baseline_running'], d['vigil_running'])}")
            caps = (r["cap_error"], r["cap_running"]) if phase == "frozen" else (
                NORMAL_CAP, NORMAL_CAP)
            rows.append([label, neighbour, _cell(d[f"{src}_error"], caps[0]),
                         _cell(d[f"{src}_running"], caps[1]), ratio])
    slack = INTERVAL + TIMEOUT
    vigil_ok = all(_within(ph["none"][f"vigil_{e}"], ph["frozen"][f"vigil_{e}"], slack)
                   for e in ("error", "running"))
    base_ok = all(_within(ph["none"][f"baseline_{e}"], ph["frozen"][f"baseline_{e}"], slack)
                  for e in ("error", "running"))
    stuck = ("the baseline's thread was inside F's probe "
             f"{r['stuck_after']:.1f} s after the freeze" if r["stuck_after"] is not None
             else "the baseline's thread did not reach F before phase B began")

    def seen(v: float | None) -> str:
        return "never" if v is None else f"after {v:.1f} s"

    verdict = (
        f"**Target {'met' if vigil_ok and not base_ok else 'NOT met'}**: with a frozen "
        f"neighbour Vigil's detection of T stays within interval + timeout = {slack:g} s of "
        f"its normal worst case ({'yes' if vigil_ok else 'no'}); the baseline's "
        f"{'does too' if base_ok else 'does not'}."
    )
    return (
        "### Detection under a frozen neighbour\n\n"
        f"50 instances on three local MariaDB servers: 48 on a healthy one, one on F "
        f"(frozen with SIGSTOP in phase B), one on T (killed with `kill -9`, then started "
        f"again, {r['cycles']} cycle(s) per phase, at random offsets from the probe phases). "
        f"Vigil (one prober, state, gateway; interval {INTERVAL:g} s, timeout {TIMEOUT:g} s, "
        f"rise {RISE}, fall {FALL}; the time is when the transition frame reaches a "
        "WebSocket client) and the baseline it replaces (one thread polling every instance "
        "in turn with pymysql's defaults — TLS context per connection, no read timeout — "
        f"then sleeping 5 s; one pass took {r['pass_seconds']:.2f} s; no rise/fall) watch the "
        "same instances at the same time. Stop → `error` is measured from the SIGKILL, "
        "start → `running` from the moment the restarted server accepts logins; in phase B "
        f"the waits are capped at {r['cap_error']:g} s and {r['cap_running']:g} s (Vigil's "
        "worst-case bound, interval·fall + timeout and interval·rise + timeout, "
        f"{'exactly' if quick else '+ 5 s'}). In phase B {stuck}; F "
        f"itself was reported `error` by Vigil {seen(r['f_vigil'])} and by the baseline "
        f"{seen(r['f_baseline'])} (F stayed frozen {r['frozen_for']:.0f} s).\n\n"
        + table(["monitor", "neighbour", "stop → `error` (s)", "start → `running` (s)",
                 "baseline median ÷ Vigil median (stop / start)"], rows)
        + "\n\n" + verdict
    )


if __name__ == "__main__":
    with Bench() as b:
        print(section(b, quick=True))
