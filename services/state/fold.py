"""Folding a batch of probe entries in one atomic FCALL of ``vigil_fold``.

Entries are validated here with msgspec, so a bad one gets a dead letter whose
reason names the field; the Function then folds the good ones, dead-letters the bad
ones and acks them all, atomically.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from services.state import metrics
from shared.keys import GROUP, Keys
from shared.redis import fcall
from shared.schema import encoder, probe_decoder, rfc3339

log = logging.getLogger("vigil.state.fold")
Entry = tuple[bytes, dict[bytes, bytes] | None]
MAX_AHEAD_MS = 300_000  # results stamped further ahead than this are dead letters


class NoInventory(Exception):
    """Redis has no inventory (it restarted without its data): load it, then fold again."""


def _text(raw: bytes, limit: int) -> str:
    return raw[:limit].decode("utf-8", "replace")


def fold_batch(entries: list[Entry]) -> bytes:
    """The batch as the one JSON argument ``vigil_fold`` takes (see shared/functions.lua)."""
    batch: list[list[Any]] = []
    now = time.time_ns() // 1_000_000
    for entry_id, fields in entries:
        eid = entry_id.decode()
        raw = (fields or {}).get(b"data")
        if raw is None:
            batch.append(["D", eid, "data: missing field", _text(repr(fields).encode(), 1000)])
            continue
        try:
            res = probe_decoder.decode(raw)
        except msgspec.DecodeError as exc:
            batch.append(["D", eid, f"undecodable probe result: {exc}", _text(raw, 4000)])
            continue
        # A result from the future would make every real one after it look stale.
        horizon = now + MAX_AHEAD_MS
        bad = ("tick" if res.tick > horizon else "at" if res.at > horizon else None)
        if bad:
            batch.append(["D", eid, f"{bad}: more than {MAX_AHEAD_MS // 1000} s in the future "
                          "(a prober's clock is wrong, or the entry is forged)",
                          _text(raw, 4000)])
            continue
        batch.append(["P", eid, res.instance, res.tick, res.at, rfc3339(res.at), res.ok,
                      res.latency_ms, res.reason, res.message])
    return encoder.encode(batch)


async def fold(r: aioredis.Redis, keys: Keys, entries: list[Entry], maxlen: int) -> list[str]:
    """Fold ``entries`` atomically; return the ids of the transitions emitted."""
    if not entries:
        return []
    start = time.perf_counter()
    try:
        reply = await fcall(r, "vigil_fold", keys.fold_keys(),
                            [GROUP, maxlen, fold_batch(entries)])
    except ResponseError as exc:
        if str(exc).startswith("NOINVENTORY"):
            raise NoInventory() from None
        if len(entries) == 1 or "Function not found" in str(exc):
            raise
        # One entry the Function chokes on must not block the batch: fold one by one.
        log.warning("batch fold failed (%s); folding %d entries one by one", exc, len(entries))
        out: list[str] = []
        for entry in entries:
            out += await fold_one_or_dead(r, keys, entry, maxlen)
        return out
    metrics.BATCH_SECONDS.observe(time.perf_counter() - start)
    folded, stale, dead, *transitions = reply
    metrics.FOLDED.inc(folded)
    metrics.STALE.inc(stale)
    metrics.DEAD.inc(dead)
    metrics.TRANSITIONS.inc(len(transitions))
    return [t.decode() for t in transitions]


async def dead_letter(r: aioredis.Redis, keys: Keys, entries: list[Entry], reason: str,
                      maxlen: int = 1000) -> None:
    """Move ``entries`` to the dead-letter stream (and ack them), atomically."""
    dead = [["D", eid.decode(), reason, _text((f or {}).get(b"data", b""), 4000)]
            for eid, f in entries]
    await fcall(r, "vigil_fold", keys.fold_keys(), [GROUP, maxlen, encoder.encode(dead)])
    metrics.DEAD.inc(len(entries))


async def fold_one_or_dead(r: aioredis.Redis, keys: Keys, entry: Entry,
                           maxlen: int) -> list[str]:
    try:
        return await fold(r, keys, [entry], maxlen)
    except ResponseError as exc:
        if str(exc).startswith("NOINVENTORY"):
            raise NoInventory() from None
        await dead_letter(r, keys, [entry], f"fold failed: {exc}", maxlen)
        return []
