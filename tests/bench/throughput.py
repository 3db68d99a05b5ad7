"""Probe throughput: one prober process against a bare pymysql loop, same server, same run."""

from __future__ import annotations

import re
import time
import urllib.request

import pymysql

from tests.bench.env import Bench, cpu_seconds
from tests.support.wait import free_port, wait_for


def bare_loop(host: str, port: int, user: str, password: str, seconds: float) -> float:
    """connect (TLS off), SELECT 1, close — as fast as one thread can; probes per second."""
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        conn = pymysql.connect(host=host, port=port, user=user, password=password,
                               ssl_disabled=True, connect_timeout=3, read_timeout=3)
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            cur.fetchone()
        conn.close()
        n += 1
    return n / (time.perf_counter() - start)


def metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", line)
        if m:
            total += float(m.group(1))
    return total


def prober_rate(bench: Bench, n_instances: int, interval: float, seconds: float,
                with_state: bool = True, blackhole_port: int | None = None,
                blackhole_share: float = 0.0) -> dict[str, float]:
    """Run one prober (and a state service) over ``n_instances`` ids on one server."""
    db = bench.mariadb()
    n_black = int(n_instances * blackhole_share)
    instances = [
        {"id": f"i{i}", "host": db.host,
         "port": blackhole_port if (blackhole_port and i < n_black) else db.port}
        for i in range(n_instances)
    ]
    prefix = f"tp{free_port()}"
    inv = bench.inventory(prefix, instances,
                          {"interval": interval, "timeout": min(1.0, interval * 0.9)})
    mport = free_port()
    env = bench.env(prefix, inv, db, VIGIL_METRICS_PORT=str(mport))
    state_env = {**env, "VIGIL_METRICS_PORT": str(free_port())}
    state = bench.service("state", state_env) if with_state else None
    if state is None:
        # No state service: load the inventory the way it would, with a short-lived one.
        loader = bench.service("state", state_env)
        wait_for(lambda: bench.client().exists(f"{prefix}:inventory"), 20, message="inventory")
        loader.stop()
    prober = bench.service("prober", env)
    wait_for(lambda: metric(mport, "vigil_probes_total") > 0, 30, message="first probes")
    time.sleep(2 * interval)  # warm up: every instance has started its schedule
    c0 = metric(mport, "vigil_probes_total")
    ok0 = metric(mport, "vigil_probe_results_published_total")
    s0 = metric(mport, "vigil_probes_skipped_total")
    cpu0 = cpu_seconds(prober.pid) + (cpu_seconds(state.pid) if state else 0)
    start = time.perf_counter()
    time.sleep(seconds)
    elapsed = time.perf_counter() - start
    probes = metric(mport, "vigil_probes_total") - c0
    published = metric(mport, "vigil_probe_results_published_total") - ok0
    skipped = metric(mport, "vigil_probes_skipped_total") - s0
    cpu = cpu_seconds(prober.pid) + (cpu_seconds(state.pid) if state else 0) - cpu0
    prober.stop()
    if state:
        state.stop()
    db.stop()
    return {"rate": probes / elapsed, "published": published / elapsed,
            "skipped": skipped / elapsed, "demand": n_instances / interval,
            "cpu_ms_per_probe": 1000 * cpu / max(probes, 1)}


def run(bench: Bench, repeats: int = 3, seconds: float = 8.0) -> dict[str, list[float]]:
    db = bench.mariadb()
    bare = [bare_loop(db.host, db.port, db.user, db.password, seconds) for _ in range(repeats)]
    db.stop()
    vigil = [prober_rate(bench, 600, 0.2, seconds) for _ in range(repeats)]
    return {"bare": bare, "vigil": [v["rate"] for v in vigil],
            "cpu_ms": [v["cpu_ms_per_probe"] for v in vigil],
            "skipped": [v["skipped"] for v in vigil]}


if __name__ == "__main__":
    with Bench() as b:
        out = run(b, repeats=1, seconds=6)
        print(out)
