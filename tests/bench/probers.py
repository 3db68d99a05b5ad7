"""Several probers: probes/s with 1, 2 and 3, coordination round trips, takeover after kill -9."""

from __future__ import annotations

import collections
import json
import statistics
import time
from typing import Any

from tests.bench.env import Bench
from tests.bench.report import mmm, table
from tests.bench.throughput import metric
from tests.support.wait import free_port, wait_for


def _fleet_env(bench: Bench, n: int, interval: float, timeout: float) -> tuple[str, dict[str, str]]:
    db = bench.mariadb()
    prefix = f"pr{free_port()}"
    inv = bench.inventory(prefix, [{"id": f"i{i}", "host": db.host, "port": db.port}
                                   for i in range(n)], {"interval": interval, "timeout": timeout})
    env = bench.env(prefix, inv, db)
    bench.service("state", {**env, "VIGIL_METRICS_PORT": str(free_port())})
    wait_for(lambda: bench.client().exists(f"{prefix}:inventory:version"), 30, message="inventory")
    return prefix, env


def rates(bench: Bench, count: int, seconds: float) -> dict[str, float]:
    prefix, env = _fleet_env(bench, 400, 0.2, 0.18)
    ports = [free_port() for _ in range(count)]
    procs = [bench.service("prober", {**env, "VIGIL_PROBER_ID": f"p{k}",
                                      "VIGIL_METRICS_PORT": str(port)})
             for k, port in enumerate(ports)]
    wait_for(lambda: bench.client().zcard(f"{prefix}:probers") == count, 30, message="members")
    time.sleep(2)

    def totals() -> tuple[float, float, float]:
        return (sum(metric(p, "vigil_probes_total") for p in ports),
                sum(metric(p, "vigil_claim_round_trips_total") for p in ports),
                sum(metric(p, "vigil_probes_skipped_total") for p in ports))

    p0, c0, s0 = totals()
    t0 = time.monotonic()
    time.sleep(seconds)
    p1, c1, s1 = totals()
    elapsed = time.monotonic() - t0
    heartbeats = count * elapsed  # one a second each
    for proc in procs:
        proc.stop()
    return {"rate": (p1 - p0) / elapsed, "skipped": (s1 - s0) / elapsed,
            "rtt_per_probe": (c1 - c0 + heartbeats) / max(p1 - p0, 1)}


def takeover_gaps(bench: Bench, kills: int) -> list[int]:
    """Start a prober beside two others, kill -9 it, and measure its instances' longest gap."""
    prefix, env = _fleet_env(bench, 100, 1.0, 0.8)
    for k in range(2):
        bench.service("prober", {**env, "VIGIL_PROBER_ID": f"stay{k}"})
    r: Any = bench.client()
    gaps = []
    for k in range(kills):
        name = f"victim{k}".encode()

        def member(name: bytes = name) -> bool:
            return name in r.zrange(f"{prefix}:probers", 0, -1)

        victim = bench.service("prober", {**env, "VIGIL_PROBER_ID": name.decode()})
        wait_for(member, 30, message="victim joined")
        time.sleep(3)
        killed = int(time.time() * 1000)
        victim.kill()
        time.sleep(5)
        ticks: dict[str, list[int]] = collections.defaultdict(list)
        owned: set[str] = set()
        for _, fields in r.xrange(f"{prefix}:probes", min=f"{killed - 3000}-0"):
            p: dict[str, Any] = json.loads(fields[b"data"])
            ticks[p["instance"]].append(p["tick"])
            if p["prober"] == f"victim{k}":
                owned.add(p["instance"])
        gaps.append(max(max(b - a for a, b in zip(sorted(t), sorted(t)[1:], strict=False))
                        for i, t in ticks.items() if i in owned))
        wait_for(lambda: not member(), 10, message="victim expired")
    return gaps


def section(bench: Bench, quick: bool) -> str:
    seconds, kills, counts = (2.0, 1, (1, 3)) if quick else (6.0, 5, (1, 2, 3))
    rows = []
    for count in counts:
        r = rates(bench, count, seconds)
        rows.append([str(count), f"{r['rate']:,.0f}", f"{r['skipped']:,.0f}",
                     f"{r['rtt_per_probe']:.3f}"])
    gaps = takeover_gaps(bench, kills)
    bound = 1000 + 3000
    return (
        "### Several probers\n\n"
        "400 instances at a 0.2 s interval (a demand of 2,000 probes/s) on one MariaDB, "
        f"shared by {', '.join(map(str, counts[:-1]))} or {counts[-1]} prober processes "
        "on this 2-core machine, with a state "
        f"service; {seconds:g} s each. Coordination round trips: pipelined claim batches "
        "plus heartbeats, per probe.\n\n"
        + table(["probers", "probes/s", "skipped/s", "Redis round trips per probe "
                 "for coordination"], rows)
        + f"\n\n{rows[-1][1]} probes/s with three probers against {rows[0][1]} with one: on "
        "this 2-core machine the probers share the cores with MariaDB and Redis, so more "
        "probers help only until the machine is full; on their own nodes each adds its "
        "own capacity.\n\n"
        f"Takeover after `kill -9` of one of three probers (100 instances, interval 1 s, "
        f"membership expiry 3 s), {len(gaps)} kill(s): the longest gap between two probes "
        f"of any of its instances was {mmm([float(g) for g in gaps], '{:.0f}')} ms "
        f"(min / median / max); bound: interval + expiry = {bound} ms. The backup takes a "
        "dead owner's tick 0.5 s into it, before the membership notices."
        + ("" if not gaps else f" Median {statistics.median(gaps):.0f} ms.")
    )


if __name__ == "__main__":
    with Bench() as b:
        print(section(b, quick=True))
