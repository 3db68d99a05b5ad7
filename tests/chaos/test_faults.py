"""Chaos: real processes, real faults, and a check that every reader sees exactly the real
sequence of status changes — none lost, none doubled, in order."""

from __future__ import annotations

import collections
import json
import random
import threading
import time
from typing import Any

import pytest

from tests.support.vigil import Stack
from tests.support.wait import wait_for

pytestmark = pytest.mark.slow
FAST = {"interval": 0.5, "timeout": 0.4, "rise": 1, "fall": 2}


class Watcher(threading.Thread):
    """A WebSocket client that stays connected, resuming with `since` when dropped."""

    def __init__(self, stack: Stack) -> None:
        super().__init__(daemon=True)
        self.stack = stack
        self.frames: list[dict[str, Any]] = []
        self.stop = threading.Event()
        self.errors: list[BaseException] = []

    def run(self) -> None:
        since: str | None = None
        while not self.stop.is_set():
            try:
                with self.stack.ws(since=since) as ws:
                    while not self.stop.is_set():
                        try:
                            msg = json.loads(ws.recv(timeout=0.2))
                        except TimeoutError:
                            continue
                        self.frames.append(msg)
                        if msg["type"] == "snapshot":
                            since = msg["cursor"]
                        elif msg["type"] == "transition":
                            since = msg["id"]
            except Exception as exc:  # dropped: reconnect with since, as a client would
                if self.stop.is_set():
                    return
                self.errors.append(exc)
                time.sleep(0.2)

    def transitions(self, instance: str) -> list[tuple[str, str, str]]:
        return [(f["id"], f["from"], f["to"]) for f in self.frames
                if f["type"] == "transition" and f["instance"] == instance]


def db_stack(service_factory: Any, redis_url: str, tmp_path: Any, prefix: str, mariadb: Any,
             ids: list[str], **extra_env: str) -> Stack:
    """A stack watching ``ids``, all pointing at ``mariadb``, probed every half second."""
    return Stack(service_factory, redis_url, tmp_path, prefix,
                 [{"id": i, "host": mariadb.host, "port": mariadb.port} for i in ids],
                 defaults=FAST, user=mariadb.user, password=mariadb.password,
                 extra_env={"VIGIL_LOG_LEVEL": "INFO", **extra_env})


def wait_all(stack: Stack, ids: list[str], status: str, timeout: float = 20) -> None:
    for i in ids:
        stack.wait_status(i, status, timeout)


def bounce(stack: Stack, mariadb: Any, ids: list[str]) -> None:
    """One real outage: MariaDB stops until every instance is `error`, then comes back."""
    mariadb.stop()
    wait_all(stack, ids, "error")
    mariadb.start()
    wait_all(stack, ids, "running")


def expected_chain(cycles: int) -> list[tuple[str, str]]:
    return [("unknown", "running")] + [("running", "error"), ("error", "running")] * cycles


def test_state_replicas_killed_mid_batch_lose_and_double_nothing(
        service_factory, redis_server, mariadb, tmp_path, prefix):
    ids = [f"db{i}" for i in range(10)]
    stack = db_stack(service_factory, redis_server.url, tmp_path, prefix, mariadb, ids,
                     VIGIL_CLAIM_IDLE="2")
    replicas = {}
    try:
        for name in ("state-a", "state-b"):  # two replicas racing on the same stream
            replicas[name] = stack._factory("services.state",
                                            {**stack.env, "VIGIL_CONSUMER": name}, name=name)
        stack.start("prober", "gateway")
        wait_all(stack, ids, "running")
        watcher = Watcher(stack)
        watcher.start()
        rng = random.Random(5)
        kills, stop_killing = [0], threading.Event()

        def killer() -> None:
            while not stop_killing.is_set() and kills[0] < 40:
                time.sleep(rng.uniform(0.2, 0.8))
                victim = replicas[rng.choice(sorted(replicas))]
                victim.kill()  # kill -9, mid-batch or not: the moment is random
                kills[0] += 1
                victim.start()  # same consumer name: it re-reads its own pending entries

        chaos = threading.Thread(target=killer, daemon=True)
        chaos.start()
        cycles = 0
        while (cycles < 4 or kills[0] < 20) and cycles < 15:
            cycles += 1
            bounce(stack, mariadb, ids)
        stop_killing.set()
        chaos.join(10)
        assert kills[0] >= 20, kills
        time.sleep(1)
        watcher.stop.set()
        watcher.join(10)
        want = expected_chain(cycles)
        for i in ids:
            stream = [(t["from"], t["to"]) for t in stack.transitions(i)]
            assert stream == want, (i, stream)
            seen = watcher.transitions(i)
            # The watcher connected after the first transition: it sees the rest, once each.
            assert [(f, t) for _, f, t in seen] == want[1:], (i, seen)
            assert len({tid for tid, _, _ in seen}) == len(seen)
        print(f"kill -9 of state replicas: {kills[0]}; transitions checked: "
              f"{len(ids) * len(want)} in the stream, {len(ids) * (len(want) - 1)} pushed")
    finally:
        stack.close()


def test_redis_pause_longer_than_the_interval_gives_no_false_error(
        service_factory, redis_server, mariadb, tmp_path, prefix):
    stack = Stack(service_factory, redis_server.url, tmp_path, prefix,
                  [{"id": f"db{i}", "host": mariadb.host, "port": mariadb.port}
                   for i in range(5)],
                  defaults=FAST, user=mariadb.user, password=mariadb.password)
    try:
        stack.start()
        for i in range(5):
            stack.wait_status(f"db{i}", "running", 15)
        client = redis_server.client()
        for _ in range(2):
            paused = int(time.time() * 1000)
            client.execute_command("CLIENT", "PAUSE", 3000, "ALL")  # 6 intervals
            time.sleep(3.5)
            # Probing resumes by itself: fresh results after the pause.
            def resumed(p: int = paused) -> bool:
                return all(max(x["tick"] for x in stack.probes(f"db{i}")) > p + 3000
                           for i in range(5))

            wait_for(resumed, 10, message="probes after the pause")
        steps = collections.Counter((t["from"], t["to"]) for t in stack.transitions())
        assert steps == {("unknown", "running"): 5}, steps
        assert stack.get("/api/summary")["running"] == 5
    finally:
        stack.close()


def test_redis_restart_without_data_resets_clients_and_recovers(
        service_factory, redis_server, mariadb, tmp_path, prefix):
    stack = Stack(service_factory, redis_server.url, tmp_path, prefix,
                  [{"id": "db", "host": mariadb.host, "port": mariadb.port}],
                  defaults=FAST, user=mariadb.user, password=mariadb.password)
    try:
        stack.start()
        stack.wait_status("db", "running", 15)
        watcher = Watcher(stack)
        watcher.start()
        wait_for(lambda: any(f["type"] == "snapshot" for f in watcher.frames), 10,
                 message="first snapshot")
        redis_server.restart()  # all data lost
        # Everything comes back by itself: inventory, functions, groups, statuses.
        stack.wait_status("db", "running", 30)

        def reset_then_snapshot() -> bool:
            kinds = [f["type"] for f in watcher.frames]
            return "reset" in kinds and "snapshot" in kinds[kinds.index("reset"):]

        wait_for(reset_then_snapshot, 20, message="reset and a fresh snapshot")
        kinds = [f["type"] for f in watcher.frames]
        after = watcher.frames[kinds.index("reset"):]
        # Nothing from the new history reached the client before its reset.
        assert all(f["type"] != "transition" for f in watcher.frames[:kinds.index("reset")]
                   if f.get("id", "") > after[0].get("id", "")), watcher.frames
        mariadb.stop()
        wait_for(lambda: any(f["type"] == "transition" and f["to"] == "error"
                             for f in watcher.frames), 15, message="live push after restart")
        watcher.stop.set()
        watcher.join(10)
        for svc in stack.services.values():
            assert svc.alive, f"{svc.name} died"
    finally:
        stack.close()


def test_probers_killed_and_garbage_on_the_stream_change_nothing_real(
        service_factory, redis_server, mariadb, tmp_path, prefix):
    ids = [f"db{i}" for i in range(10)]
    stack = db_stack(service_factory, redis_server.url, tmp_path, prefix, mariadb, ids)
    probers = {}
    try:
        stack.start("state", "gateway")
        for name in ("p1", "p2"):
            probers[name] = stack._factory("services.prober",
                                           {**stack.env, "VIGIL_PROBER_ID": name}, name=name)
        wait_all(stack, ids, "running")
        rng = random.Random(11)
        faults: collections.Counter[str] = collections.Counter()
        stop_faults = threading.Event()

        def chaos() -> None:
            while not stop_faults.is_set():
                time.sleep(rng.uniform(0.5, 1.5))
                if rng.random() < 0.5:
                    victim = probers[rng.choice(sorted(probers))]
                    victim.kill()
                    faults["kill -9 prober"] += 1
                    victim.start()
                else:
                    stack.redis.xadd(f"{prefix}:probes", {"data": rng.choice([
                        b"garbage", b'{"instance": 7}', b'{"instance":"db1","tick":"x"}'])})
                    faults["garbage entry"] += 1

        thread = threading.Thread(target=chaos, daemon=True)
        thread.start()
        cycles = 0
        while (cycles < 3 or min(faults["kill -9 prober"], faults["garbage entry"]) < 3) \
                and cycles < 12:
            cycles += 1
            bounce(stack, mariadb, ids)
        stop_faults.set()
        thread.join(10)
        assert faults["kill -9 prober"] >= 3 and faults["garbage entry"] >= 3, faults
        want = expected_chain(cycles)
        for i in ids:
            assert [(t["from"], t["to"]) for t in stack.transitions(i)] == want, i
        wait_for(lambda: stack.redis.xlen(f"{prefix}:dead") == faults["garbage entry"], 10,
                 message="every garbage entry dead-lettered")
        print(f"faults: {dict(faults)}; transitions checked: {len(ids) * len(want)}")
    finally:
        stack.close()


def test_sigterm_of_each_service_under_load_exits_0_and_loses_nothing(
        service_factory, redis_server, mariadb, tmp_path, prefix):
    ids = [f"db{i}" for i in range(40)]
    stack = db_stack(service_factory, redis_server.url, tmp_path, prefix, mariadb, ids,
                     VIGIL_GRACE="5")
    try:
        stack.start()
        wait_all(stack, ids, "running")
        watcher = Watcher(stack)
        watcher.start()
        wait_for(lambda: watcher.frames, 10, message="watcher connected")
        mariadb.stop()  # changes in flight while each service is stopped and started
        for name in ("prober", "state", "gateway"):
            svc = stack.services[name]
            t0 = time.monotonic()
            assert svc.stop(timeout=15) == 0, name
            assert time.monotonic() - t0 < 5 + 3, f"{name} overran its grace period"
            stack.start(name)
        wait_all(stack, ids, "error")
        mariadb.start()
        wait_all(stack, ids, "running")
        time.sleep(1)
        watcher.stop.set()
        watcher.join(10)
        want = expected_chain(1)
        for i in ids:
            assert [(t["from"], t["to"]) for t in stack.transitions(i)] == want, i
            assert [(f, t) for _, f, t in watcher.transitions(i)] == want[1:], i
        assert not any(f.get("type") == "reset" for f in watcher.frames)
    finally:
        stack.close()
