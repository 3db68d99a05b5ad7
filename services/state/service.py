"""The state service's whole life: load the inventory, fold probe results, emit transitions."""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis

from services.state.fold import fold
from services.state.inventory import InventoryLoader
from shared import observe
from shared.errors import ConfigError
from shared.keys import GROUP, Keys
from shared.logs import redact
from shared.redis import TRANSIENT, connect, ensure_group, load_functions, retrying
from shared.settings import Settings
from shared.streams import GroupReader

log = logging.getLogger("vigil.state")
CLAIM_IDLE_MS = 30_000  # entries idle this long on another consumer are taken over


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
        async for attempt in retrying(deadline=float("inf")):
            with attempt:
                if stop.is_set():
                    break
                await load_functions(r)
                await ensure_group(r, keys.probes, GROUP)
                await loader.sync(r)
        watcher = asyncio.create_task(loader.watch(r, stop), name="inventory")
        reader = GroupReader(r, keys.probes, GROUP, settings.consumer)
        await consume(r, keys, reader, settings, stop, state)
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    await r.aclose()


async def consume(r: aioredis.Redis, keys: Keys, reader: GroupReader, settings: Settings,
                  stop: asyncio.Event, state: dict[str, bool]) -> None:
    """Fold batches until ``stop``; a batch in progress is finished, never cut in half."""
    failures = 0
    while not stop.is_set():
        try:
            entries = await reader.read()
            state["ready"] = True
            if entries:
                await fold(r, keys, entries, settings.transitions_maxlen)
            failures = 0
        except TRANSIENT as exc:
            failures += 1
            state["ready"] = False
            delay = min(5.0, 0.05 * 2 ** min(failures, 10))
            log.warning("redis unavailable (%s); retrying in %.2fs", exc, delay)
            await asyncio.sleep(delay)
        except Exception:
            failures += 1
            log.exception("fold loop error; carrying on")
            await asyncio.sleep(min(5.0, 0.05 * 2 ** min(failures, 10)))
    log.info("stopped taking probe results")
