"""The prober's whole life: ``run(settings, stop)``."""

from __future__ import annotations

import asyncio
import logging

from services.prober.loop import Prober
from services.prober.publish import Publisher
from shared import observe
from shared.inventory import load_credentials
from shared.keys import Keys
from shared.logs import redact
from shared.redis import connect
from shared.settings import Settings

log = logging.getLogger("vigil.prober")


async def run(settings: Settings, stop: asyncio.Event) -> None:
    credentials = load_credentials(settings)  # ConfigError → exit 2 before anything starts
    keys = Keys(settings.prefix)
    r = connect(settings)
    publisher = Publisher(r, keys, settings.probes_maxlen)
    prober = Prober(r, keys, settings.prober_id, credentials, publisher,
                    settings.prober_workers)

    def ready() -> bool:
        return prober.inventory_seen and publisher.healthy and not stop.is_set()

    log.info("prober %s starting (redis %s, prefix %r)", settings.prober_id,
             redact(settings.redis_url), settings.prefix)
    async with observe.serve(settings.metrics_port, ready):
        follower = asyncio.create_task(prober.follow_inventory(stop), name="inventory")
        scheduler = asyncio.create_task(prober.schedule(stop), name="scheduler")
        flusher = asyncio.create_task(publisher.run(), name="publisher")
        await stop.wait()
        log.info("draining: no new probes; finishing in-flight ones")
        await scheduler
        await prober.drain(settings.grace)
        follower.cancel()
        publisher.close()
        try:
            await asyncio.wait_for(flusher, timeout=max(settings.grace, 0.1))
        except TimeoutError:
            log.warning("%d results not published before the grace period ended", len(publisher))
        await asyncio.gather(follower, return_exceptions=True)
    await r.aclose()
