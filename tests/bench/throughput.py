"""Probe throughput: one prober process against a bare pymysql loop, same server, same run."""

from __future__ import annotations

import re
import time
import urllib.request

import pymysql

from tests.bench.env import Bench, cpu_seconds
from tests.support.proxy import TcpProxy
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
                with_state: bool = True, blackhole_share: float = 0.0) -> dict[str, float]:
    """Run one prober (and a state service) over ``n_instances`` ids on one server.

    ``blackhole_share`` of them point at a port that accepts TCP and never answers.
    """
    db = bench.mariadb()
    n_black = int(n_instances * blackhole_share)
    proxy = TcpProxy(db.host, db.port, mode="blackhole") if n_black else None
    blackhole_port = None
    if proxy is not None:
        proxy.start()
        blackhole_port = proxy.port
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
    pids = {"prober": prober.pid, "state": state.pid if state else None,
            "redis": bench.redis.pid}
    cpu0 = {k: cpu_seconds(p) if p else 0.0 for k, p in pids.items()}
    start = time.perf_counter()
    time.sleep(seconds)
    elapsed = time.perf_counter() - start
    probes = metric(mport, "vigil_probes_total") - c0
    published = metric(mport, "vigil_probe_results_published_total") - ok0
    skipped = metric(mport, "vigil_probes_skipped_total") - s0
    cpu = {k: (cpu_seconds(p) if p else 0.0) - cpu0[k] for k, p in pids.items()}
    ok = metric(mport, "vigil_probe_latency_seconds_count")
    prober.stop()
    if state:
        state.stop()
    if proxy is not None:
        proxy.stop()
    db.stop()
    return {"rate": probes / elapsed, "published": published / elapsed, "ok_total": ok,
            "skipped": skipped / elapsed, "demand": n_instances / interval,
            **{f"cpu_{k}": 1000 * v / max(probes, 1) for k, v in cpu.items()}}
