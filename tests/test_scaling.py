"""Several probers share the work: one probe per instance per tick, fast takeover, no doubles."""

from __future__ import annotations

import collections
import json
import re
import signal
import time
from typing import Any

import httpx
import pytest

from services.prober.membership import ranking
from tests.support.procs import Service
from tests.support.vigil import Stack
from tests.support.wait import free_port, wait_for

N = 200
INTERVAL_MS = 1000
EXPIRY_MS = 3000  # services.prober.membership.EXPIRY


def now_ms() -> int:
    return int(time.time() * 1000)


class Fleet:
    def __init__(self, stack: Stack):
        self.stack = stack
        self.probers: dict[str, Service] = {}

    def start(self, name: str) -> Service:
        svc = self.stack._factory("services.prober", {**self.stack.env, "VIGIL_PROBER_ID": name},
                                  name=name)
        self.probers[name] = svc
        return svc

    def members(self) -> set[str]:
        return {m.decode() for m in self.stack.redis.zrange(f"{self.stack.prefix}:probers", 0, -1)}

    def probes(self, since_ms: int, until_ms: int) -> list[dict[str, Any]]:
        out = []
        for _, fields in self.stack.redis.xrange(f"{self.stack.prefix}:probes"):
            p = json.loads(fields[b"data"])
            if since_ms <= p["tick"] < until_ms:
                out.append(p)
        return out

    def wait_until(self, t_ms: int) -> None:
        """Until every probe of ticks before ``t_ms`` had time to be published."""
        wait_for(lambda: now_ms() >= t_ms + 500, (t_ms - now_ms()) / 1000 + 5,
                 interval=0.1, message=f"time {t_ms}")


def expected_ticks(instance: str, since_ms: int, until_ms: int) -> set[int]:
    from services.prober.schedule import next_slot

    ticks, t = set(), next_slot(instance, INTERVAL_MS, since_ms - 1)
    while t < until_ms:
        ticks.add(t)
        t += INTERVAL_MS
    return ticks


def audit(probes: list[dict[str, Any]], since_ms: int, until_ms: int) -> dict[str, Any]:
    per_tick = collections.Counter((p["instance"], p["tick"]) for p in probes)
    seen: dict[str, set[int]] = collections.defaultdict(set)
    for inst, tick in per_tick:
        seen[inst].add(tick)
    missed = sorted((tick, f"i{i}") for i in range(N)
                    for tick in expected_ticks(f"i{i}", since_ms, until_ms) - seen[f"i{i}"])
    probers = {p["prober"] for p in probes}
    return {"doubles": sum(1 for c in per_tick.values() if c > 1), "misses": len(missed),
            # for a failure's message: which tick of which instance, and who ranked first
            "missed": [(inst, tick - since_ms, ranking(probers, inst)[:2])
                       for tick, inst in missed[:5]],
            "by_prober": collections.Counter(p["prober"] for p in probes),
            "owner": {p["instance"]: p["prober"] for p in sorted(probes, key=lambda p: p["tick"])}}


def max_gap(probes: list[dict[str, Any]]) -> int:
    ticks: dict[str, list[int]] = collections.defaultdict(list)
    for p in probes:
        ticks[p["instance"]].append(p["tick"])
    return max(max(b - a for a, b in zip(sorted(t), sorted(t)[1:], strict=False))
               for t in ticks.values())


@pytest.fixture
def fleet(service_factory, redis_server, mariadb, tmp_path, prefix):
    stack = Stack(service_factory, redis_server.url, tmp_path, prefix,
                  [{"id": f"i{i}", "host": mariadb.host, "port": mariadb.port} for i in range(N)],
                  defaults={"interval": INTERVAL_MS / 1000, "timeout": 0.8, "rise": 1,
                            "fall": 2},
                  user=mariadb.user, password=mariadb.password,
                  extra_env={"VIGIL_LOG_LEVEL": "INFO"})
    stack.start("state")
    yield Fleet(stack)
    stack.close()


def test_probers_share_the_work_join_and_take_over(fleet):
    for name in ("p1", "p2", "p3"):
        fleet.start(name)
    wait_for(lambda: fleet.members() == {"p1", "p2", "p3"}, 15, message="three members")
    t0 = now_ms() + 2000  # every prober has seen the others by then
    t1 = t0 + 20 * INTERVAL_MS
    fleet.wait_until(t1)
    steady = audit(fleet.probes(t0, t1), t0, t1)
    assert (steady["doubles"], steady["misses"]) == (0, 0), steady
    shares = steady["by_prober"]
    assert set(shares) == {"p1", "p2", "p3"}
    assert max(shares.values()) / min(shares.values()) <= 1.3, shares

    # A fourth prober takes about a quarter, within two heartbeats; only it gains.
    joined = now_ms()
    fleet.start("p4")
    t2, t3 = joined + 2000 + 2000, joined + 2000 + 5000  # +2 s: Python starting up
    fleet.wait_until(t3)
    after = audit(fleet.probes(t2, t3), t2, t3)
    assert (after["doubles"], after["misses"]) == (0, 0), after
    share4 = after["by_prober"]["p4"] / sum(after["by_prober"].values())
    assert 0.15 <= share4 <= 0.35, after["by_prober"]
    moved = {i for i, p in after["owner"].items() if p != steady["owner"][i]}
    assert all(after["owner"][i] == "p4" for i in moved)  # rendezvous: nobody else shuffles
    assert 0.15 <= len(moved) / N <= 0.35

    # kill -9 one: its instances are probed by the others within interval + expiry.
    fleet.probers["p1"].kill()
    killed = now_ms()
    t4 = killed + EXPIRY_MS + 3000
    fleet.wait_until(t4)
    around = fleet.probes(killed - 3000, t4)
    gap = max_gap(around)
    print(f"longest gap between two probes of one instance after kill -9: {gap} ms")
    assert gap < INTERVAL_MS + EXPIRY_MS
    late = audit(fleet.probes(killed + EXPIRY_MS, t4), killed + EXPIRY_MS, t4)
    assert (late["doubles"], late["misses"]) == (0, 0), late
    assert "p1" not in late["by_prober"]
    assert wait_for(lambda: fleet.members() == {"p2", "p3", "p4"}, 5, message="p1 expired")

    # No false transitions through all of it: each instance went unknown → running once.
    steps = collections.Counter((t["from"], t["to"]) for t in fleet.stack.transitions())
    assert steps == {("unknown", "running"): N}


def test_sigterm_hands_over_without_missing_a_tick(fleet):
    for name in ("p1", "p2", "p3"):
        fleet.start(name)
    wait_for(lambda: fleet.members() == {"p1", "p2", "p3"}, 15, message="three members")
    fleet.wait_until(now_ms() + 2000)
    fleet.probers["p2"].signal(signal.SIGTERM)
    stopped = now_ms()
    assert fleet.probers["p2"].wait(15) == 0
    assert "p2" not in fleet.members()  # left at once, not after expiry
    # Every tick p2 claimed (claims outlive it by seconds) was probed by p2: a claimed
    # tick is not taken by its backup, so one dropped in the drain would be missed.
    claimed = set()
    for key in fleet.stack.redis.scan_iter(f"{fleet.stack.prefix}:claim:*", count=1000):
        if fleet.stack.redis.get(key) == b"p2":
            inst, tick = key.decode().rsplit(":", 2)[1:]
            claimed.add((inst, int(tick)))
    assert claimed, "p2's claims of its last ticks"
    probed = {(p["instance"], p["tick"]) for p in fleet.probes(stopped - 5000, stopped + 5000)
              if p["prober"] == "p2"}
    assert claimed <= probed, sorted(claimed - probed)[:5]
    t_end = stopped + 6000
    fleet.wait_until(t_end)
    around = audit(fleet.probes(stopped - 2000, t_end), stopped - 2000, t_end)
    assert (around["doubles"], around["misses"]) == (0, 0), around
    assert set(around["by_prober"]) == {"p1", "p2", "p3"}
    steps = collections.Counter((t["from"], t["to"]) for t in fleet.stack.transitions())
    assert steps == {("unknown", "running"): N}


def test_the_state_service_says_when_no_prober_is_alive(
        service_factory, redis_server, mariadb, tmp_path, prefix):
    metrics_port = free_port()
    stack = Stack(service_factory, redis_server.url, tmp_path, prefix,
                  [{"id": "db", "host": mariadb.host, "port": mariadb.port}],
                  user=mariadb.user, password=mariadb.password,
                  extra_env={"VIGIL_CLAIM_IDLE": "1"})  # a janitor pass every second
    state_env = {**stack.env, "VIGIL_METRICS_PORT": str(metrics_port)}

    def alive() -> float | None:
        text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2).text
        m = re.search(r"^vigil_probers_alive (\S+)$", text, re.M)
        return float(m.group(1)) if m else None

    try:
        state = service_factory("services.state", state_env, name="state")
        wait_for(lambda: alive() == 0, 15, message="no prober yet")
        stack.start("prober")
        wait_for(lambda: alive() == 1, 15, message="the prober counted")
        assert "no prober is alive" not in state.log()  # none yet at start is no alarm
        stack.services["prober"].kill()  # kill -9: it cannot say goodbye
        wait_for(lambda: alive() == 0, EXPIRY_MS / 1000 + 5, message="its heartbeat expired")
        wait_for(lambda: "no prober is alive" in state.log(), 15,  # once start-up is over
                 message="the state service says no prober is alive")
    finally:
        stack.close()
