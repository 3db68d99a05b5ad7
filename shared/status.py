"""Reading what the fold wrote: a consistent snapshot with its cursor, and transition history.

Used by the gateway; kept in shared/ so tools and tests read exactly what clients see.
"""

from __future__ import annotations

import logging
import re

import msgspec
import redis.asyncio as aioredis

from shared.keys import Keys
from shared.redis import fcall
from shared.schema import (
    Status,
    StatusRecord,
    Summary,
    instance_decoder,
    record_decoder,
    status_of,
)

STATUS_ORDER = {"error": 0, "unknown": 1, "running": 2}
log = logging.getLogger("vigil.status")


class Snapshot(msgspec.Struct):
    cursor: str
    origin: str
    summary: Summary
    instances: list[Status]
    inventory: str = ""  # the inventory version it shows


def _pairs(flat: list[bytes]) -> dict[bytes, bytes]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


async def read_snapshot(r: aioredis.Redis, keys: Keys) -> Snapshot:
    """Statuses, summary and the transitions cursor, read in one atomic Function call.

    Every transition with an id after ``cursor`` happened after this snapshot.
    """
    cursor, origin, inv_flat, status_flat, summary_flat, version = await fcall(
        r, "vigil_snapshot", keys.snapshot_keys(), [], readonly=True
    )
    records = _pairs(status_flat)
    instances = []
    for ident, raw in _pairs(inv_flat).items():
        try:
            inst = instance_decoder.decode(raw)
        except msgspec.DecodeError as exc:
            log.error("inventory entry %r in redis is invalid, left out: %s", ident, exc)
            continue
        rec_raw = records.get(ident)
        try:
            rec = record_decoder.decode(rec_raw) if rec_raw else StatusRecord()
        except msgspec.DecodeError as exc:
            log.error("status of %r in redis is invalid, shown as unknown: %s", ident, exc)
            rec = StatusRecord()
        instances.append(status_of(inst, rec))
    instances.sort(key=lambda s: (STATUS_ORDER[s.status], s.name, s.id))
    counts = {k.decode(): int(v) for k, v in _pairs(summary_flat).items()}
    summary = Summary(
        running=counts.get("running", 0), error=counts.get("error", 0),
        unknown=counts.get("unknown", 0),
    )
    summary.total = summary.running + summary.error + summary.unknown
    return Snapshot(cursor=cursor.decode(), origin=origin.decode(), summary=summary,
                    instances=instances, inventory=version.decode())


INVENTORY_CHANGED = "ok, inventory changed"


async def resumable(r: aioredis.Redis, keys: Keys, since: str) -> str:
    """``"ok"`` when every transition after ``since`` is still kept (``INVENTORY_CHANGED``
    when, moreover, the inventory changed after it), else why not."""
    verdict = await fcall(r, "vigil_resumable", keys.resumable_keys(), [since], readonly=True)
    return str(verdict.decode() if isinstance(verdict, bytes) else verdict)


class HistoryGone(Exception):
    """Transitions after the point asked for were trimmed: reading on would skip them."""


async def history_page(r: aioredis.Redis, keys: Keys, after: str,
                       count: int) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """Up to ``count`` transition entries after ``after`` (exclusive), oldest first.

    Raises ``HistoryGone`` when some entries after ``after`` are no longer kept: the check
    and the read are one atomic call, so a reader paging forward cannot skip entries that
    were trimmed between two pages.
    """
    reply = await fcall(r, "vigil_history", [keys.transitions, keys.origin], [after, count],
                        readonly=True)
    verdict = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
    if verdict != "ok":
        raise HistoryGone(verdict)
    return [(entry_id, _pairs(flat)) for entry_id, flat in reply[1]]


_STREAM_ID = re.compile(r"([0-9]{1,20})(?:-([0-9]{1,20}))?", re.ASCII)
_U64 = 2**64 - 1


def parse_stream_id(value: str) -> tuple[int, int] | None:
    """``"1733241600000-0"`` → (ms, seq); None when it is not a valid stream id."""
    m = _STREAM_ID.fullmatch(value)  # not match + $: "$" also matches before a final "\n"
    if m is None:
        return None
    ms, seq = int(m.group(1)), int(m.group(2) or 0)
    if ms > _U64 or seq > _U64:
        return None
    return ms, seq


async def read_inventory(r: aioredis.Redis, keys: Keys) -> tuple[bytes | None, dict[str, bytes]]:
    """The inventory as loaded into Redis, with its version, read in one transaction."""
    async with r.pipeline(transaction=True) as pipe:
        pipe.get(keys.inventory_version)
        pipe.hgetall(keys.inventory)
        version, flat = await pipe.execute()
    return version, {k.decode(): v for k, v in flat.items()}
