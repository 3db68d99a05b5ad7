"""The prober's whole life: ``run(settings, stop)``."""

from __future__ import annotations

import asyncio
import logging

from services.prober import metrics
from services.prober.loop import Prober
from services.prober.membership import HEARTBEAT, Membership
from services.prober.publish import Publisher
from shared import observe
from shared.inventory import load_credentials
from shared.keys import Keys
from shared.lifecycle import cancel_and_wait, sleep_or_stop
from shared.logs import redact
from shared.redis import TRANSIENT, connect
from shared.settings import Settings

log = logging.getLogger("vigil.prober")


async def run(settings: Settings, stop: asyncio.Event) -> None:
    credentials = load_credentials(settings)  # ConfigError → exit 2 before anything starts
    keys = Keys(settings.prefix)
    r = connect(settings)
    publisher = Publisher(r, keys, settings.probes_maxlen)
    members = Membership(r, keys, settings.prober_id)
    prober = Prober(r, keys, settings.prober_id, credentials, publisher,
                    settings.prober_workers, members)

    def ready() -> bool:
        return prober.inventory_seen and publisher.healthy and not stop.is_set()

    log.info("prober %s starting (redis %s, prefix %r)", settings.prober_id,
             redact(settings.redis_url), settings.prefix)
    async with observe.serve(settings.metrics_port, ready):
        follower = asyncio.create_task(prober.follow_inventory(stop), name="inventory")
        scheduler = asyncio.create_task(prober.schedule(stop), name="scheduler")
        heartbeats = asyncio.create_task(beat(members, prober, stop), name="heartbeat")
        flusher = asyncio.create_task(publisher.run(), name="publisher")
        await stop.wait()
        log.info("draining: no new probes; finishing in-flight ones")
        await scheduler
        await cancel_and_wait(heartbeats)
        try:  # leave now: the others take our instances at their next heartbeat
            await asyncio.wait_for(members.leave(), 2)
        except (TimeoutError, *TRANSIENT) as exc:
            log.warning("could not leave the membership (%s); it expires by itself", exc)
        await prober.drain(settings.grace)
        await cancel_and_wait(follower)
        publisher.close()
        try:
            await asyncio.wait_for(flusher, timeout=max(settings.grace, 0.1))
        except TimeoutError:
            log.warning("%d results not published before the grace period ended", len(publisher))
    await r.aclose()


async def beat(members: Membership, prober: Prober, stop: asyncio.Event) -> None:
    """Heartbeat until ``stop``; on a change of members, recount what we own.

    The first heartbeat waits for the inventory: a member the others hand instances to
    must already be scheduling them.
    """
    while not prober.inventory_seen and not stop.is_set():
        await sleep_or_stop(stop, 0.05)
    while not stop.is_set():
        try:
            if await members.heartbeat():
                prober.count_owned()
            metrics.MEMBERS.set(len(members.members))
        except TRANSIENT as exc:
            log.warning("heartbeat failed (%s); keeping the last known members", exc)
        except Exception:
            log.exception("heartbeat error; carrying on")
        await sleep_or_stop(stop, HEARTBEAT)
