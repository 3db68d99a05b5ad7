"""The state service's whole life: load the inventory, fold probe results, emit transitions."""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis

from services.state import metrics
from services.state.fold import Entry, NoInventory, dead_letter, fold
from services.state.inventory import InventoryLoader
from shared import observe
from shared.errors import ConfigError
from shared.keys import GROUP, Keys
from shared.lifecycle import cancel_and_wait, sleep_or_stop
from shared.logs import redact
from shared.redis import TRANSIENT, connect, ensure_group, load_functions, retrying
from shared.settings import Settings
from shared.streams import GroupReader

log = logging.getLogger("vigil.state")
JANITOR_EVERY = 10.0  # seconds between janitor passes (at most VIGIL_CLAIM_IDLE)
FORGET_AFTER = 10  # a consumer silent 10 x VIGIL_CLAIM_IDLE, with nothing pending, is removed
MAX_DELIVERIES = 5  # an entry delivered more often than this is a dead letter


async def run(settings: Settings, stop: asyncio.Event) -> None:
    if not settings.inventory:
        raise ConfigError(["VIGIL_INVENTORY: not set; the state service loads the inventory "
                           "file (TOML, see README)"])
    loader = InventoryLoader(settings.inventory, Keys(settings.prefix))
    loader.load_file()  # ConfigError → exit 2, before anything starts
    keys = Keys(settings.prefix)
    r = connect(settings)
    state = {"ready": False}

    def ready() -> bool:
        return state["ready"] and not stop.is_set()

    log.info("state consumer %s starting (redis %s, prefix %r)", settings.consumer,
             redact(settings.redis_url), settings.prefix)
    async with observe.serve(settings.metrics_port, ready):
        async for attempt in retrying(deadline=float("inf"), doing="starting"):
            with attempt:
                if stop.is_set():
                    break
                await load_functions(r)
                await ensure_group(r, keys.probes, GROUP)
                await loader.sync(r)
        watcher = asyncio.create_task(loader.watch(r, stop), name="inventory")
        reader = GroupReader(r, keys.probes, GROUP, settings.consumer)
        await consume(r, keys, reader, loader, settings, stop, state)
        await cancel_and_wait(watcher)
    await r.aclose()


async def consume(r: aioredis.Redis, keys: Keys, reader: GroupReader, loader: InventoryLoader,
                  settings: Settings, stop: asyncio.Event, state: dict[str, bool]) -> None:
    """Fold batches until ``stop``; a batch in progress is finished, never cut in half.

    A batch that failed for a transient reason is folded again (it is still pending on
    us); one that failed otherwise is left pending, and the janitor pass later retries it
    or, once delivered too often, dead-letters it.
    """
    failures = 0
    entries: list[Entry] = []
    next_janitor = 0.0
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not stop.is_set():
        try:
            if not entries and loop.time() >= next_janitor:
                next_janitor = loop.time() + min(JANITOR_EVERY, settings.claim_idle)
                entries = await janitor_batch(r, keys, reader, int(settings.claim_idle * 1000))
                # Probers often start after us: no warning about none in the first pass.
                await count_probers(r, keys, quiet=loop.time() - started < JANITOR_EVERY)
            if not entries:
                entries = await reader.read()
                state["ready"] = True
            if entries:
                await fold(r, keys, entries, settings.transitions_maxlen)
            entries = []
            failures = 0
        except NoInventory:
            log.warning("redis has no inventory (restarted without data?): loading it")
            await loader.sync(r)
        except TRANSIENT as exc:
            failures += 1
            state["ready"] = False
            delay = min(5.0, 0.05 * 2 ** min(failures, 10))
            log.warning("redis unavailable (%s); retrying in %.2fs", exc, delay)
            await sleep_or_stop(stop, delay)
        except Exception:
            failures += 1
            entries = []
            log.exception("fold loop error; the batch stays pending for the janitor")
            await sleep_or_stop(stop, min(5.0, 0.05 * 2 ** min(failures, 10)))
    log.info("stopped taking probe results")


async def count_probers(r: aioredis.Redis, keys: Keys, quiet: bool = False) -> None:
    """How many probers heartbeat (by Redis' clock, as they do). None at all means every
    status goes stale: say so in the log (unless ``quiet``), and in ``vigil_probers_alive``
    for alerts."""
    seconds, micros = await r.time()
    alive = int(await r.zcount(keys.probers, f"({seconds * 1000 + micros // 1000}", "+inf"))
    metrics.PROBERS.set(alive)
    if (alive == 0) != _no_probers[0] and not (quiet and alive == 0):
        _no_probers[0] = alive == 0
        if alive == 0:
            log.warning("no prober is alive: statuses are not being checked")
        else:
            log.info("%d probers alive", alive)


_no_probers = [False]  # what the log last said


async def janitor_batch(r: aioredis.Redis, keys: Keys, reader: GroupReader,
                        idle_ms: int) -> list[Entry]:
    """Take over entries idle on other (dead) consumers; dead-letter the ones that keep failing.

    Returns the claimed entries still worth folding.
    """
    claimed = await reader.claim_idle(idle_ms)
    gone = await reader.forget_dead(idle_ms * FORGET_AFTER)
    if gone:
        log.info("removed consumers that are gone (nothing pending): %s", ", ".join(gone))
    if not claimed:
        return []
    counts = await reader.deliveries([eid for eid, _ in claimed])
    keep: list[Entry] = []
    poison: list[Entry] = []
    for entry in claimed:
        (poison if counts.get(entry[0], 0) > MAX_DELIVERIES else keep).append(entry)
    if poison:
        await dead_letter(r, keys, poison, f"delivered more than {MAX_DELIVERIES} times")
    log.warning("took over %d entries idle on other consumers (%d dead-lettered)",
                len(claimed), len(poison))
    return keep
