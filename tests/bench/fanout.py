"""Fan-out: one transition to 1,000 and 5,000 WebSocket clients of one gateway.

The clients live in a separate load-generator process (``python -m tests.bench.fanout
clients PORT``), written to cost as little CPU as possible so that what is measured is the
gateway: each client is a bare ``asyncio.Protocol`` with a minimal RFC 6455 client (no
compression offered, pings answered), and a frame costs it a header parse and a
``bytes.find`` for the transition id. Latency = time the chunk holding the frame was read
minus the millisecond in the transition's stream id (when Redis added it; same clock, ±1 ms).

This process drives: it XADDs well-formed transitions straight to ``<prefix>:transitions``
(a state service runs, with an inventory, but nothing is probed: the gateway is the unit
measured; the pipeline section covers probe → fold → client) and talks to the load
generator over its stdin/stdout, one JSON line per command.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import os
import resource
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tests.bench.env import Bench, cpu_seconds, rss_mib
from tests.bench.report import table
from tests.support.wait import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
N_INSTANCES = 100  # the snapshot every client gets on connect
TARGET_P99_MS = 250.0  # at 5,000 clients
TARGET_KB_PER_CLIENT = 50.0
CONNECT_CONCURRENCY = 100


# --- the load generator (its own process) ------------------------------------------------

class _Stats:
    def __init__(self) -> None:
        self.latencies: list[float] = []  # ms, transition frames since the last report
        self.snapshots = 0
        self.closed: Counter[str] = Counter()
        self.target = 0
        self.reached = asyncio.Event()

    def frame(self, latency: float) -> None:
        self.latencies.append(latency)
        if self.target and len(self.latencies) >= self.target:
            self.reached.set()


class _Client(asyncio.Protocol):
    """A WebSocket client that only reads: handshake, then frames (server frames are unmasked)."""

    def __init__(self, stats: _Stats, request: bytes, opened: asyncio.Future[None]) -> None:
        self.stats = stats
        self.request = request
        self.opened = opened
        self.buf = b""
        self.upgraded = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"connection lost during handshake: {exc}"))
        elif self.upgraded:
            self.stats.closed["eof"] += 1
            self.upgraded = False

    def data_received(self, data: bytes) -> None:
        now_ms = time.time() * 1000.0
        buf = self.buf + data if self.buf else data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self.opened.set_exception(ConnectionError(buf[:80].decode(errors="replace")))
                assert self.transport is not None
                self.transport.close()
                return
            self.upgraded = True
            buf = buf[end + 4:]
        pos, n = 0, len(buf)
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length, head = b1 & 0x7F, 2
            if length == 126:
                if n - pos < 4:
                    break
                length, head = struct.unpack_from("!H", buf, pos + 2)[0], 4
            elif length == 127:
                if n - pos < 10:
                    break
                length, head = struct.unpack_from("!Q", buf, pos + 2)[0], 10
            if n - pos < head + length:
                break
            start = pos + head
            pos = start + length
            opcode = b0 & 0x0F
            if opcode == 1:
                if buf.startswith(b'{"type":"transition"', start):
                    i = buf.rfind(b'"id":"', start, pos)
                    ms = int(buf[i + 6:buf.index(b"-", i + 6)])
                    self.stats.frame(now_ms - ms)
                elif buf.startswith(b'{"type":"snapshot"', start):
                    self.stats.snapshots += 1
                    if not self.opened.done():
                        self.opened.set_result(None)
            elif opcode == 9:  # ping: answer with a masked pong carrying the same payload
                self._send(0xA, buf[start:pos])
            elif opcode == 8:
                code = struct.unpack_from("!H", buf, start)[0] if length >= 2 else 1005
                self.stats.closed[str(code)] += 1
                self.upgraded = False
                self._send(0x8, buf[start:start + 2])
                assert self.transport is not None
                self.transport.close()
        self.buf = buf[pos:]

    def _send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        assert self.transport is not None and len(payload) < 126
        self.transport.write(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)


async def _clients(host: str, port: int, path: str) -> None:
    """Commands on stdin, one JSON reply per line on stdout:

    ``{"connect": n}`` → open n more clients, each until its snapshot; ``{"expect": n,
    "timeout": s}`` → wait until n transition frames arrived since the last report, then
    report; ``{"report": true}`` → report now. A report has the count, latency percentiles,
    clients open and close codes seen.
    """
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    loop = asyncio.get_running_loop()
    stats = _Stats()
    clients: list[_Client] = []
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def reply(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    async def one() -> _Client:
        key = base64.b64encode(os.urandom(16)).decode()
        request = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                   "Sec-WebSocket-Version: 13\r\n\r\n").encode()
        opened: asyncio.Future[None] = loop.create_future()
        _, proto = await loop.create_connection(lambda: _Client(stats, request, opened),
                                                host, port)
        await asyncio.wait_for(opened, 30)
        return proto

    sem = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def limited() -> _Client:
        async with sem:
            return await one()

    def report(raw: bool = False) -> dict[str, Any]:
        lat = sorted(stats.latencies)
        stats.latencies = []
        stats.target = 0
        stats.reached.clear()

        def pct(q: float) -> float | None:
            return lat[min(len(lat) - 1, int(q * len(lat)))] if lat else None

        return {"frames": len(lat), "p50": pct(0.50), "p99": pct(0.99),
                "max": lat[-1] if lat else None, "open": sum(c.upgraded for c in clients),
                "closed": dict(stats.closed), "all": [round(x, 1) for x in lat] if raw else []}

    while line := await reader.readline():
        cmd = json.loads(line)
        if "connect" in cmd:
            t0 = time.perf_counter()
            clients += await asyncio.gather(*(limited() for _ in range(cmd["connect"])))
            reply({"open": sum(c.upgraded for c in clients), "seconds": time.perf_counter() - t0})
        elif "expect" in cmd:
            stats.target = cmd["expect"]
            if len(stats.latencies) < stats.target:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stats.reached.wait(), cmd.get("timeout", 10))
            reply(report(cmd.get("raw", False)))
        else:
            reply(report())
    for c in clients:
        if c.transport is not None:
            c.transport.abort()


class LoadGenerator:
    def __init__(self, port: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.bench.fanout", "clients", str(port)], cwd=ROOT,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self._lock = threading.Lock()

    def call(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        with self._lock:
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the load generator exited ({self.proc.poll()})")
        return dict(json.loads(line))

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --- the driver (this process) -----------------------------------------------------------

class Transitions:
    """XADDs transitions of instance i0, flipping running/error, as the fold would write them."""

    def __init__(self, client: Any, prefix: str) -> None:
        self.r = client
        self.key = f"{prefix}:transitions"
        self.up = False

    def add(self, n: int = 1) -> None:
        pipe = self.r.pipeline(transaction=False)
        for _ in range(n):
            self.up = not self.up
            frm, to = ("error", "running") if self.up else ("running", "error")
            pipe.xadd(self.key, {"data": json.dumps({
                "instance": "i0", "name": "i0", "from": frm, "to": to,
                "at": "2026-12-03T16:00:00.123Z", "reason": None if self.up else "refused",
                "message": None if self.up else "connection refused",
                "summary": {"total": N_INSTANCES, "running": 1, "error": 0,
                            "unknown": N_INSTANCES - 1}})}, maxlen=10_000, approximate=True)
        pipe.execute()


KEPT_UP_P99_MS = 1000.0  # a rate is sustained if every frame arrives, p99 within this


def _kept_up(x: dict[str, Any]) -> bool:
    return bool(x["frames"] == x["expected"] and not x["closed"]
                and x["p99"] is not None and x["p99"] < KEPT_UP_P99_MS)


def _all_open(load: LoadGenerator, n: int) -> bool:
    return bool(load.call(report=True)["open"] == n)


def _latency_rounds(load: LoadGenerator, tr: Transitions, clients: int,
                    rounds: int) -> dict[str, Any]:
    p50s, p99s, maxes, missing = [], [], [], 0
    pooled: list[float] = []
    for _ in range(rounds):
        tr.add()
        rep = load.call(expect=clients, timeout=10, raw=True)
        missing += clients - rep["frames"]
        pooled += rep["all"]
        if rep["frames"]:
            p50s.append(rep["p50"])
            p99s.append(rep["p99"])
            maxes.append(rep["max"])
        time.sleep(0.2)
    pooled.sort()

    def pct(q: float) -> float | None:
        return pooled[min(len(pooled) - 1, int(q * len(pooled)))] if pooled else None

    p99s.sort()
    return {"p50": pct(0.5), "p99": pct(0.99), "p999": pct(0.999),
            "median_round_p99": p99s[len(p99s) // 2] if p99s else None,
            "worst_p99": p99s[-1] if p99s else None, "max": max(maxes, default=None),
            "missing": missing, "rounds": rounds}


def _sustained(load: LoadGenerator, tr: Transitions, clients: int, rate: float,
               seconds: float, gateway_pid: int) -> dict[str, Any]:
    load.call(report=True)  # start from zero
    total = round(rate * seconds)
    batch = max(1, round(rate / 50))  # XADD every 20 ms
    cpu0 = cpu_seconds(gateway_pid)
    start = time.monotonic()
    for k in range(0, total, batch):
        due = start + k / rate
        if (wait := due - time.monotonic()) > 0:
            time.sleep(wait)
        tr.add(min(batch, total - k))
    sent_in = time.monotonic() - start
    rep = load.call(expect=total * clients, timeout=10)
    elapsed = time.monotonic() - start
    return {"rate": rate, "sent_per_s": total / sent_in, "frames": rep["frames"],
            "expected": total * clients, "p50": rep["p50"], "p99": rep["p99"],
            "max": rep["max"], "open": rep["open"], "closed": rep["closed"],
            "gateway_cpu": (cpu_seconds(gateway_pid) - cpu0) / elapsed}


def run(bench: Bench, counts: tuple[int, ...] = (1000, 5000), rounds: int = 20,
        rates: tuple[float, ...] = (20, 50, 100, 150, 200, 300),
        seconds: float = 4.0) -> dict[str, Any]:
    prefix = f"fo{free_port()}"
    nobody = free_port()
    inv = bench.inventory(prefix, [{"id": f"i{i}", "host": "127.0.0.1", "port": nobody}
                                   for i in range(N_INSTANCES)],
                          {"interval": 60.0, "timeout": 3.0})
    env = bench.env(prefix, inv, None)
    bench.service("state", env)
    gateway = bench.service("gateway", env)
    port = int(env["VIGIL_GATEWAY_PORT"])
    bench.wait_ready(port, prefix)
    client = bench.client()
    tr = Transitions(client, prefix)
    load = LoadGenerator(port)
    out: dict[str, Any] = {"latency": [], "memory": [], "sustained": []}
    try:
        load.call(connect=10)  # warm-up: first-use allocations are not per-client memory
        load.call(report=True)
        rss0, have = rss_mib(gateway.pid), 10
        for n in counts:
            rep = load.call(connect=n - have)
            have = n
            assert rep["open"] == n, rep
            wait_for(functools.partial(_all_open, load, n), 10)
            rss = rss_mib(gateway.pid)
            out["memory"].append({"clients": n, "rss_mib": rss,
                                  "kib_per_client": (rss - rss0) * 1024 / (n - 10),
                                  "connect_s": rep["seconds"]})
            out["latency"].append({"clients": n, **_latency_rounds(load, tr, n, rounds)})
            if n == counts[0]:
                for rate in rates:
                    res = _sustained(load, tr, n, rate, seconds, gateway.pid)
                    out["sustained"].append(res)
                    if not _kept_up(res):
                        break
        out["rss_end"] = rss_mib(gateway.pid)
    finally:
        load.close()
        client.close()
    return out


def section(bench: Bench, quick: bool) -> str:
    r = run(bench, counts=(200, 1000), rounds=3, rates=(20,), seconds=2.0) if quick else run(bench)

    def ms(v: float | None) -> str:
        return "—" if v is None else f"{v:.0f}"

    lat_rows = [[f"{x['clients']:,}", ms(x["p50"]), ms(x["p99"]), ms(x["p999"]), ms(x["max"]),
                 f"{ms(x['median_round_p99'])} / {ms(x['worst_p99'])}", f"{x['missing']}"]
                for x in r["latency"]]
    mem_rows = [[f"{x['clients']:,}", f"{x['rss_mib']:.0f}", f"{x['kib_per_client']:.1f}",
                 f"{x['connect_s']:.1f}"] for x in r["memory"]]
    sus_rows = [[f"{x['rate']:.0f}", f"{x['sent_per_s']:.0f}",
                 f"{x['frames']:,} of {x['expected']:,}", ms(x["p50"]), ms(x["p99"]),
                 f"{100 * x['gateway_cpu']:.0f} %",
                 ", ".join(f"{v} with {k}" for k, v in x["closed"].items()) or "none"]
                for x in r["sustained"]]
    biggest = r["latency"][-1]
    per_client = max(x["kib_per_client"] for x in r["memory"])
    kept_up = [x for x in r["sustained"] if _kept_up(x)]
    best = max((x["rate"] for x in kept_up), default=0)
    met_lat = biggest["p99"] is not None and biggest["p99"] < TARGET_P99_MS \
        and biggest["missing"] == 0
    met_mem = per_client < TARGET_KB_PER_CLIENT
    return (
        "### WebSocket fan-out\n\n" + __doc__.split("\n\n", 1)[1].strip() + "\n\n"
        "Delivery latency of one transition to every connected client, "
        f"{r['latency'][0]['rounds']} rounds 0.2 s apart; percentiles over every delivery of "
        "every round (clients times rounds), and the p99 of the median and the worst round:\n\n"
        + table(["clients", "p50 (ms)", "p99 (ms)", "p99.9 (ms)", "max (ms)",
                 "round p99: median / worst (ms)", "frames missing"], lat_rows)
        + f"\n\n**p99 to {biggest['clients']:,} clients: {ms(biggest['p99'])} ms** — target "
        f"< {TARGET_P99_MS:g} ms {'met' if met_lat else 'NOT met'}.\n\n"
        "Gateway memory (RSS) with the clients connected, each having received its snapshot of "
        f"{N_INSTANCES} instances; per client = growth over 10 warm-up clients:\n\n"
        + table(["clients", "gateway RSS (MiB)", "KiB per client", "connect all (s)"], mem_rows)
        + f"\n\n**{per_client:.1f} KiB per client** — target < {TARGET_KB_PER_CLIENT:g} KB "
        f"{'met' if met_mem else 'NOT met'}.\n\n"
        f"Sustained transitions/s to {r['latency'][0]['clients']:,} clients (each rate for a few "
        "seconds; frames delivered must equal transitions times clients, with no client "
        f"closed and p99 under {KEPT_UP_P99_MS:g} ms):\n\n"
        + table(["transitions/s", "sent/s", "frames delivered", "p50 (ms)", "p99 (ms)",
                 "gateway CPU", "clients closed"], sus_rows)
        + f"\n\nHighest rate every client kept up with: **{best:.0f} transitions/s** "
        f"(= {best * r['latency'][0]['clients']:,.0f} frames/s)."
    )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "clients":
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        asyncio.run(_clients("127.0.0.1", int(sys.argv[2]), "/ws"))
    else:
        with Bench() as b:
            print(section(b, quick="--quick" in sys.argv))
