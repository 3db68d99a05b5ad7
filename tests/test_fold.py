"""The fold, as one Redis Function call, against a real Redis."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import redis.asyncio as aioredis

from services.state.fold import fold
from shared.inventory import digest
from shared.keys import GROUP, Keys
from shared.redis import ensure_group, fcall, load_functions
from shared.schema import Instance, encoder
from shared.streams import GroupReader

T0 = 1_800_000_000_000


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
        assert data["reason"] == "timeout" and data["at"] == "2027-01-15T08:00:00.010Z"
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
