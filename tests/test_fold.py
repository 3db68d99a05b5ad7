"""The fold, as one Redis Function call, against a real Redis."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
import redis.asyncio as aioredis

from services.state.fold import NoInventory, fold
from shared.inventory import digest
from shared.keys import GROUP, Keys
from shared.redis import ensure_group, fcall, load_functions
from shared.schema import Instance, encoder
from shared.streams import GroupReader
from tests.support.vigil import Stack
from tests.support.wait import wait_for

T0 = 1_700_000_000_000  # 2023-11-14T22:13:20Z


class Folder:
    """Publish results and fold them exactly as the state service does."""

    def __init__(self, r: aioredis.Redis, prefix: str, instances: list[Instance]):
        self.r: Any = r  # replies are bytes; redis-py's types cannot say so
        self.keys = Keys(prefix)
        self.instances = instances
        self.reader = GroupReader(r, self.keys.probes, GROUP, "c1", block_ms=10)

    async def setup(self) -> None:
        await load_functions(self.r)
        await ensure_group(self.r, self.keys.probes, GROUP)
        await self.sync(self.instances)

    async def sync(self, instances: list[Instance]) -> int:
        args: list[Any] = [digest(instances)]
        for i in instances:
            args += [i.id, encoder.encode(i)]
        return int(await fcall(self.r, "vigil_sync_inventory", self.keys.inventory_keys(), args))

    async def push(self, *results: dict[str, Any] | bytes) -> list[str]:
        for res in results:
            data = res if isinstance(res, bytes) else json.dumps(res)
            await self.r.xadd(self.keys.probes, {"data": data})
        return await fold(self.r, self.keys, await self.reader.read(), 1000)

    async def status(self, ident: str) -> dict[str, Any]:
        return dict(json.loads(await self.r.hget(self.keys.status, ident)))

    async def summary(self) -> dict[str, int]:
        return {k.decode(): int(v) for k, v in (await self.r.hgetall(self.keys.summary)).items()}


def result(ident: str, tick: int, ok: bool, reason: str | None = None) -> dict[str, Any]:
    return {"instance": ident, "prober": "p", "tick": T0 + tick, "at": T0 + tick + 5, "ok": ok,
            "latency_ms": 1.5, "reason": None if ok else (reason or "refused"),
            "message": None if ok else "connection refused"}


@pytest.fixture
def folder(redis_server, prefix):
    async def make(instances: list[Instance]) -> Folder:
        f = Folder(aioredis.Redis.from_url(redis_server.url), prefix, instances)
        await f.setup()
        return f
    return make


def test_rise_and_fall_thresholds(folder):
    async def go() -> None:
        f = await folder([Instance(id="a", host="h", rise=2, fall=3)])
        assert await f.push(result("a", 1, True)) == []
        assert (await f.status("a"))["status"] == "unknown"
        assert len(await f.push(result("a", 2, True))) == 1
        assert (await f.status("a"))["status"] == "running"
        assert await f.push(result("a", 3, False), result("a", 4, False)) == []
        assert len(await f.push(result("a", 5, False, "timeout"))) == 1
        st = await f.status("a")
        assert (st["status"], st["reason"], st["fail"]) == ("error", "timeout", 3)
        assert await f.push(result("a", 6, True)) == []
        assert len(await f.push(result("a", 7, True))) == 1
        transitions = await f.r.xrange(f.keys.transitions)
        steps = [(json.loads(d[b"data"])["from"], json.loads(d[b"data"])["to"])
                 for _, d in transitions]
        assert steps == [("unknown", "running"), ("running", "error"), ("error", "running")]
        data = json.loads(transitions[1][1][b"data"])
        assert data["reason"] == "timeout" and data["at"] == "2023-11-14T22:13:20.010Z"
        assert data["summary"] == {"total": 1, "running": 0, "error": 1, "unknown": 0}
        await f.r.aclose()
    asyncio.run(go())


def test_stale_and_duplicate_results_are_acked_and_ignored(folder):
    async def go() -> None:
        f = await folder([Instance(id="a", host="h", rise=1, fall=1)])
        await f.push(result("a", 10, True))
        before = await f.status("a")
        # The same tick again (a redelivery, a second prober) and an older one: no effect.
        assert await f.push(result("a", 10, False), result("a", 9, False)) == []
        assert await f.status("a") == before
        assert (await f.r.xpending(f.keys.probes, GROUP))["pending"] == 0
        await f.r.aclose()
    asyncio.run(go())


def test_garbage_and_unknown_instances_go_to_dead_letters_naming_the_problem(folder):
    async def go() -> None:
        f = await folder([Instance(id="a", host="h", rise=1, fall=1)])
        bad_tick = dict(result("a", 1, True), tick="soon")
        await f.push(b"not json", bad_tick, result("ghost", 1, True), result("a", 2, True))
        dead = await f.r.xrange(f.keys.dead)
        reasons = [d[b"reason"].decode() for _, d in dead]
        assert len(reasons) == 3
        assert reasons[0].startswith("undecodable probe result")
        assert "$.tick" in reasons[1]
        assert reasons[2].startswith("instance: not in the inventory")
        assert (await f.status("a"))["status"] == "running"  # the good one still folded
        assert (await f.r.xpending(f.keys.probes, GROUP))["pending"] == 0
        await f.r.aclose()
    asyncio.run(go())


def test_inventory_sync_is_idempotent_and_keeps_the_summary_true(folder):
    async def go() -> None:
        a, b = Instance(id="a", host="h", rise=1), Instance(id="b", host="h", fall=1)
        f = await folder([a, b])
        assert await f.sync([a, b]) == 0  # same content: nothing written
        await f.push(result("a", 1, True), result("b", 1, False))
        assert await f.summary() == {"running": 1, "error": 1, "unknown": 0}
        assert await f.sync([a]) == 1  # b removed
        assert await f.summary() == {"running": 1, "error": 0, "unknown": 0}
        assert await f.r.hget(f.keys.status, "b") is None
        c = Instance(id="c", host="h")
        await f.sync([a, c])
        assert await f.summary() == {"running": 1, "error": 0, "unknown": 1}
        assert (await f.status("a"))["status"] == "running"  # kept across reloads
        await f.r.aclose()
    asyncio.run(go())


def test_results_from_the_future_and_out_of_range_are_dead_letters(folder):
    async def go() -> None:
        f = await folder([Instance(id="a", host="h", rise=1, fall=1)])
        now = int(time.time() * 1000)
        await f.push(dict(result("a", 0, True), tick=now + 3_600_000, at=now),
                     dict(result("a", 0, True), tick=now, at=10**17),
                     dict(result("a", 0, True), tick=-5),
                     dict(result("a", 0, True), instance="bad id!"),
                     dict(result("a", 0, True), tick=now, at=now))
        reasons = [d[b"reason"].decode() for _, d in await f.r.xrange(f.keys.dead)]
        assert [r.split(":")[0] for r in reasons] == ["tick", "undecodable probe result",
                                                      "undecodable probe result",
                                                      "undecodable probe result"]
        assert "$.at" in reasons[1] and "$.tick" in reasons[2] and "$.instance" in reasons[3]
        assert (await f.status("a"))["status"] == "running"  # the good one still counts
        await f.r.aclose()
    asyncio.run(go())


def test_no_inventory_in_redis_means_no_write_and_a_clear_signal(folder):
    async def go() -> None:
        f = await folder([Instance(id="a", host="h")])
        await f.r.delete(f.keys.inventory_version, f.keys.inventory)
        await f.r.xadd(f.keys.probes, {"data": json.dumps(result("a", 1, True))})
        entries = await f.reader.read()
        with pytest.raises(NoInventory):
            await fold(f.r, f.keys, entries, 1000)
        assert await f.r.xlen(f.keys.dead) == 0
        assert (await f.r.xpending(f.keys.probes, GROUP))["pending"] == 1  # kept, not lost
        await f.sync(f.instances)
        await fold(f.r, f.keys, entries, 1000)
        assert (await f.status("a"))["status"] == "running"
        await f.r.aclose()
    asyncio.run(go())


def test_entries_left_by_a_dead_replica_are_taken_over(service_factory, redis_server, prefix,
                                                       tmp_path):
    """A replica that read a batch and died (a new pod name next time) loses nothing."""
    stack = Stack(service_factory, redis_server.url, tmp_path, prefix,
                  [{"id": "a", "host": "127.0.0.1", "port": 9, "rise": 1, "fall": 1}],
                  extra_env={"VIGIL_CLAIM_IDLE": "1"})
    try:
        stack.start("state")
        wait_for(lambda: stack.redis.exists(f"{prefix}:inventory:version"), 10,
                 message="inventory loaded")
        stack.stop("state")
        now = int(time.time() * 1000)
        for i, ok in enumerate((True, False)):
            stack.redis.xadd(f"{prefix}:probes", {"data": json.dumps(
                dict(result("a", 0, ok), tick=now + i, at=now + i))})
        # The doomed replica reads both and dies before folding them.
        got = stack.redis.xreadgroup(GROUP, "crashed-pod", {f"{prefix}:probes": ">"})
        assert len(got[0][1]) == 2
        stack.start("state")
        steps = wait_for(lambda: [(t["from"], t["to"]) for t in stack.transitions()] or None,
                         20, message="the orphaned results folded")
        assert steps == [("unknown", "running"), ("running", "error")]
        assert stack.redis.xpending(f"{prefix}:probes", GROUP)["pending"] == 0

        # Once nothing is pending on it and it stayed silent, the dead consumer is removed.
        def names() -> set[bytes]:
            return {c["name"] for c in stack.redis.xinfo_consumers(f"{prefix}:probes", GROUP)}

        wait_for(lambda: b"crashed-pod" not in names(), 20, message="crashed-pod removed")
        assert b"state-1" in names()
    finally:
        stack.close()


def test_fold_counters_survive_a_state_restart(service_factory, redis_server, prefix, tmp_path):
    """One of two failures, a state restart, one more failure: error, not a reset count."""
    stack = Stack(service_factory, redis_server.url, tmp_path, prefix,
                  [{"id": "a", "host": "127.0.0.1", "port": 9, "rise": 1, "fall": 2}])
    try:
        stack.start("state")
        now = int(time.time() * 1000)

        def push(i: int, ok: bool) -> None:
            stack.redis.xadd(f"{prefix}:probes", {"data": json.dumps(
                dict(result("a", 0, ok), tick=now + i, at=now + i))})

        push(0, True)
        push(1, False)
        wait_for(lambda: stack.status_in_redis("a")["fail"] == 1, 10, message="one failure")
        assert stack.status_in_redis("a")["status"] == "running"
        assert stack.stop("state") == {"state": 0}
        stack.start("state")
        push(2, False)
        wait_for(lambda: stack.status_in_redis("a")["status"] == "error", 10,
                 message="error after the second failure")
    finally:
        stack.close()


def test_a_state_service_started_before_redis_says_so_then_starts(service_factory, redis_server,
                                                                  prefix, tmp_path):
    stack = Stack(service_factory, redis_server.url, tmp_path, prefix,
                  [{"id": "a", "host": "127.0.0.1", "port": 9}])
    try:
        redis_server.stop()
        state = service_factory("services.state", stack.env, name="state")
        wait_for(lambda: "redis unavailable while starting" in state.log(), 15,
                 message="the state service says what it waits for")
        redis_server.start()
        wait_for(lambda: "loaded into redis: 1 instances" in state.log(), 20,
                 message="started once Redis answers")
        assert stack.status_in_redis("a")["status"] == "unknown"
    finally:
        stack.close()
