"""Pipeline latency: a probe result's XADD to the matching transition frame at a WebSocket client.

Only the state service and a gateway run; this process replaces the prober and XADDs
ProbeResult documents itself, at a steady rate, for instances with rise = fall = 1 whose
``ok`` flips at every injection, so every injection is one transition. The receiving
client runs in a separate process (``python -m tests.bench.pipeline receive URL``) so that
the load generator does not share a GIL with it; it prints one line per transition frame
(receive time, instance, ``at``, id) and injections are matched by (instance, ``at``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from shared.schema import rfc3339
from tests.bench.env import Bench, cpu_seconds
from tests.bench.report import table
from tests.support.wait import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
N_INSTANCES = 200
WARMUP = 1.0  # seconds of each run left out of the figures
TARGET_P99_MS = 20.0  # at 100 transitions/s
PROBES_MAXLEN = 100_000  # as the prober trims (VIGIL_PROBES_MAXLEN default)


# --- the receiving client (its own process) ----------------------------------------------

async def _receive(url: str) -> None:
    """Print ``ready`` after the snapshot, then ``<time.time()> <instance> <at> <id>`` per frame."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    out = sys.stdout
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    async def flush_often() -> None:
        while True:
            await asyncio.sleep(0.05)
            out.flush()

    async def read(ws: Any) -> None:
        try:
            async for raw in ws:
                at = time.time()
                msg = json.loads(raw)
                if msg.get("type") == "transition":
                    out.write(f"{at:.6f} {msg['instance']} {msg['at']} {msg['id']}\n")
                else:
                    out.write(f"# {msg.get('type')}\n")
        except ConnectionClosed as exc:
            out.write(f"# closed {exc.rcvd.code if exc.rcvd else '-'}\n")
        stop.set()

    async with connect(url, max_size=2**24, open_timeout=10) as ws:
        await ws.recv()  # the snapshot
        out.write("ready\n")
        out.flush()
        tasks = [asyncio.create_task(flush_often()), asyncio.create_task(read(ws))]
        await stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    out.flush()


class Receiver:
    """The receiving process, and a thread here that collects what it prints."""

    def __init__(self, url: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.bench.pipeline", "receive", url], cwd=ROOT,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.frames: dict[tuple[str, str], tuple[float, int]] = {}  # → (received, id's ms)
        self.notes: list[str] = []
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._collect, name="receiver-out", daemon=True)
        self._thread.start()
        if not self._ready.wait(20):
            self.close()
            raise RuntimeError(f"the receiving client did not get a snapshot: {self.notes}")

    def _collect(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line == "ready\n":
                self._ready.set()
            elif line.startswith("#"):
                self.notes.append(line[1:].strip())
            else:
                at, instance, when, entry_id = line.split()
                with self._lock:
                    self.frames[(instance, when)] = (float(at), int(entry_id.split("-")[0]))

    def count(self) -> int:
        with self._lock:
            return len(self.frames)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._thread.join(5)


# --- the load generator (this process) ---------------------------------------------------

class Injector:
    """XADDs flipping ProbeResults, round robin over the instances; remembers what it sent."""

    def __init__(self, client: Any, prefix: str, ids: list[str]) -> None:
        self.r = client
        self.key = f"{prefix}:probes"
        self.ids = ids
        self.ok = dict.fromkeys(ids, False)  # the next injection flips it: first one is ok
        self.seq = 0
        base = time.time_ns() // 1_000_000
        self.tick0 = base  # strictly increasing per instance (globally, in fact)
        self.at0 = base  # unique per injection: the frame carries it back

    def run(self, rate: float, seconds: float) -> tuple[list[tuple[str, str, float]], float]:
        """Inject at ``rate``/s for ``seconds`` on a monotonic schedule.

        Returns (instance, ``at`` as the frame shows it, time.time() just before the XADD)
        per injection, and the worst lateness against the schedule (s).
        """
        sent: list[tuple[str, str, float]] = []
        total = round(rate * seconds)
        start = time.monotonic()
        late = 0.0
        for k in range(total):
            due = start + k / rate
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            else:
                late = max(late, -wait)
            seq = self.seq
            self.seq += 1
            ident = self.ids[seq % len(self.ids)]
            ok = not self.ok[ident]
            self.ok[ident] = ok
            at = self.at0 + seq
            doc = json.dumps({
                "instance": ident, "prober": "bench", "tick": self.tick0 + seq, "at": at,
                "ok": ok, "latency_ms": 1.0, "reason": None if ok else "refused",
                "message": None if ok else "x",
            })
            t = time.time()
            self.r.xadd(self.key, {"data": doc}, maxlen=PROBES_MAXLEN, approximate=True)
            sent.append((ident, rfc3339(at) or "", t))
        return sent, late


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def run(bench: Bench, rates: tuple[float, ...] = (100.0, 1000.0),
        seconds: float = 10.0) -> list[dict[str, Any]]:
    ids = [f"i{i}" for i in range(N_INSTANCES)]
    nobody = free_port()  # nothing probes: the address is never used
    prefix = f"pl{free_port()}"
    inv = bench.inventory(prefix, [{"id": i, "host": "127.0.0.1", "port": nobody} for i in ids],
                          {"interval": 5.0, "timeout": 3.0, "rise": 1, "fall": 1})
    env = bench.env(prefix, inv, None)
    state = bench.service("state", env)
    gateway = bench.service("gateway", env)
    port = int(env["VIGIL_GATEWAY_PORT"])
    bench.wait_ready(port, prefix)
    client = bench.client()
    wait_for(lambda: client.hlen(f"{prefix}:status") == N_INSTANCES, 20,
             message="inventory loaded")
    receiver = Receiver(f"ws://127.0.0.1:{port}/ws")
    injector = Injector(client, prefix, ids)
    results = []
    try:
        for rate in rates:
            pids = {"state": state.pid, "gateway": gateway.pid, "redis": bench.redis.pid}
            cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
            before = receiver.count()
            w0 = time.perf_counter()
            sent, late = injector.run(rate, seconds)
            elapsed = time.perf_counter() - w0
            cpu = {k: (cpu_seconds(p) - cpu0[k]) / elapsed for k, p in pids.items()}
            expected = before + len(sent)  # every injection is one transition

            def all_in(n: int = expected) -> bool:
                return receiver.count() >= n or receiver.proc.poll() is not None

            with contextlib.suppress(AssertionError):
                wait_for(all_in, 10, interval=0.05)
            t_start = sent[0][2] if sent else 0.0
            measured = [s for s in sent if s[2] >= t_start + WARMUP]
            got = [(receiver.frames[(i, a)], t) for i, a, t in measured
                   if (i, a) in receiver.frames]
            lat = [1000 * (recv - t) for (recv, _), t in got]
            # The transition's stream id carries the ms Redis added it: XADD → fold → XADD
            # of the transition, then stream → gateway → client (each ±1 ms: ids are in ms).
            fold = [ms - 1000 * t for (_, ms), t in got]
            fan = [1000 * recv - ms for (recv, ms), _ in got]
            results.append({
                "rate": rate, "seconds": seconds, "sent": len(sent),
                "achieved": len(sent) / elapsed, "late_ms": 1000 * late,
                "measured": len(measured), "matched": len(lat),
                "p50": statistics.median(lat) if lat else None,
                "p99": _pct(lat, 0.99) if lat else None, "max": max(lat) if lat else None,
                "fold_p50": statistics.median(fold) if fold else None,
                "fan_p50": statistics.median(fan) if fan else None,
                "fold_p99": _pct(fold, 0.99) if fold else None,
                "fan_p99": _pct(fan, 0.99) if fan else None,
                "cpu": cpu, "notes": list(receiver.notes),
            })
            time.sleep(0.5)
    finally:
        receiver.close()
    client.close()
    return results


def section(bench: Bench, quick: bool) -> str:
    seconds = 3.0 if quick else 10.0
    res = run(bench, seconds=seconds)

    def ms(v: float | None) -> str:
        return "—" if v is None else f"{v:.2f}"

    def ms1(v: float | None) -> str:
        return "—" if v is None else f"{v:.0f}"

    rows = [[f"{r['rate']:.0f}", f"{r['achieved']:.0f} (worst {r['late_ms']:.1f} ms late)",
             ms(r["p50"]), ms(r["p99"]), ms(r["max"]),
             f"{ms1(r['fold_p50'])} + {ms1(r['fan_p50'])}",
             f"{ms1(r['fold_p99'])} + {ms1(r['fan_p99'])}",
             f"{r['matched']} of {r['measured']}",
             " / ".join(f"{100 * r['cpu'][k]:.0f} %" for k in ("state", "gateway", "redis"))]
            for r in res]
    at100 = next((r for r in res if r["rate"] == 100), None)
    p99 = at100["p99"] if at100 else None
    complete = at100 is not None and at100["matched"] == at100["measured"]
    met = p99 is not None and p99 < TARGET_P99_MS and complete
    notes = sorted({n for r in res for n in r["notes"]})
    verdict = (f"**Target {'met' if met else 'NOT met'}**: p99 {ms(p99)} ms at 100 "
               f"transitions/s (target < {TARGET_P99_MS:g} ms on loopback"
               + ("" if complete else ", and every transition delivered") + ").")
    if notes:
        verdict += " The client also saw: " + ", ".join(notes) + "."
    return (
        "### Pipeline latency\n\n"
        f"The state service and one gateway only (no prober): this process XADDs ProbeResult "
        f"documents to `<prefix>:probes` at a steady rate (a monotonic schedule, no batching, "
        f"no linger) for {N_INSTANCES} instances with rise = fall = 1, flipping `ok` at every "
        "injection so that each one is a transition. A WebSocket client in a separate "
        "process timestamps every frame; latency = frame received minus just before the "
        "XADD (`time.time()` in both processes), matched by (instance, `at`); the split is "
        "XADD → transition added to the stream (its id's millisecond) + stream → client, "
        f"each ±1 ms. {seconds:g} s per rate, the first {WARMUP:g} s left out. CPU is each "
        "process' share of one core "
        "during the run (the injector and the client come on top, all on the same machine).\n\n"
        + table(["transitions/s", "sent/s", "p50 (ms)", "p99 (ms)", "max (ms)",
                 "p50 split (ms)", "p99 split (ms)", "frames matched",
                 "CPU: state / gateway / redis"], rows)
        + "\n\n" + verdict
    )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "receive":
        asyncio.run(_receive(sys.argv[2]))
    else:
        with Bench() as b:
            print(section(b, quick=True))
