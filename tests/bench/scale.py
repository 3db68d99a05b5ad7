"""Scale of the inventory: CPU and memory of each service at 100, 1,000 and 10,000 instances."""

from __future__ import annotations

import time
from typing import Any

from tests.bench.env import Bench, cpu_seconds, rss_mib
from tests.bench.report import table
from tests.bench.throughput import metric
from tests.support.wait import free_port, wait_for

INTERVAL = 5.0


def measure(bench: Bench, n: int, window: float) -> dict[str, Any]:
    dbs = [bench.mariadb(), bench.mariadb()]
    instances = [{"id": f"i{i}", "host": dbs[i % 2].host, "port": dbs[i % 2].port}
                 for i in range(n)]
    prefix = f"scale{free_port()}"
    inv = bench.inventory(prefix, instances, {"interval": INTERVAL, "timeout": 3.0})
    env = bench.env(prefix, inv, dbs[0])
    mport = free_port()
    procs = {
        "state": bench.service("state", {**env, "VIGIL_METRICS_PORT": str(free_port())}),
        "prober": bench.service("prober", {**env, "VIGIL_METRICS_PORT": str(mport)}),
        "gateway": bench.service("gateway", env),
    }
    bench.wait_ready(int(env["VIGIL_GATEWAY_PORT"]), prefix)
    wait_for(lambda: metric(mport, "vigil_probes_total") >= n, INTERVAL * 4,
             message="every instance probed once")
    cpu0 = {k: cpu_seconds(p.pid) for k, p in procs.items()} | {
        "redis": cpu_seconds(bench.redis.pid)}
    done0 = metric(mport, "vigil_probes_total")
    skip0 = metric(mport, "vigil_probes_skipped_total")
    t0 = time.monotonic()
    time.sleep(window)
    elapsed = time.monotonic() - t0
    cpu = {k: (cpu_seconds(p.pid) - cpu0[k]) / elapsed for k, p in procs.items()}
    cpu["redis"] = (cpu_seconds(bench.redis.pid) - cpu0["redis"]) / elapsed
    out = {
        "n": n, "probes": (metric(mport, "vigil_probes_total") - done0) / elapsed,
        "skipped": (metric(mport, "vigil_probes_skipped_total") - skip0) / elapsed,
        "cpu": cpu, "rss": {k: rss_mib(p.pid) for k, p in procs.items()},
    }
    for p in procs.values():
        p.stop()
    for db in dbs:
        db.stop()
    bench.client().flushall()
    return out


def section(bench: Bench, quick: bool) -> str:
    sizes, window = ((100,), 3.0) if quick else ((100, 1000, 10_000), 2 * INTERVAL)
    results = [measure(bench, n, window) for n in sizes]
    rows = []
    for r in results:
        total = sum(r["cpu"].values())
        per_probe = 1000 * total / max(r["probes"], 1)
        rows.append([
            f"{r['n']:,}", f"{r['probes']:,.0f} ({r['n'] / INTERVAL:,.0f})", f"{r['skipped']:,.0f}",
            *(f"{100 * r['cpu'][k]:.0f} % · {r['rss'][k]:.0f} MiB"
              for k in ("prober", "state", "gateway")),
            f"{100 * r['cpu']['redis']:.0f} %", f"{per_probe:.2f} ms",
        ])
    return (
        "### Scale of the inventory\n\n"
        f"Instances at a {INTERVAL:g} s interval, spread over two local MariaDB servers; one "
        f"prober, one state replica, one gateway; CPU (% of one core) and resident memory "
        f"over {window:g} s after every instance was probed once. MariaDB's own CPU is not "
        "counted but runs on the same 2 cores.\n\n"
        + table(["instances", "probes/s (due)", "skipped/s", "prober CPU · RSS",
                 "state CPU · RSS", "gateway CPU · RSS", "redis-server CPU",
                 "CPU per probe (all)"], rows)
    )


if __name__ == "__main__":
    with Bench() as b:
        print(section(b, quick=True))
