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
from shared.schema import probe_decoder, rfc3339

log = logging.getLogger("vigil.state.fold")
PAD = ["", "", "", "", "", ""]
Entry = tuple[bytes, dict[bytes, bytes] | None]


def fold_args(entries: list[Entry]) -> list[Any]:
    """Flatten entries into the Function's fixed-width argument list (see functions.lua)."""
    args: list[Any] = []
    for entry_id, fields in entries:
        raw = (fields or {}).get(b"data")
        if raw is None:
            args += ["D", entry_id, "data: missing field", repr(fields)[:1000], *PAD]
            continue
        try:
            res = probe_decoder.decode(raw)
        except msgspec.DecodeError as exc:
            args += ["D", entry_id, f"undecodable probe result: {exc}", raw[:4000], *PAD]
            continue
        args += [
            "P", entry_id, res.instance, res.tick, res.at, rfc3339(res.at),
            1 if res.ok else 0, res.latency_ms, res.reason or "", res.message or "",
        ]
    return args


async def fold(r: aioredis.Redis, keys: Keys, entries: list[Entry], maxlen: int) -> list[str]:
    """Fold ``entries`` atomically; return the ids of the transitions emitted."""
    if not entries:
        return []
    start = time.perf_counter()
    try:
        reply = await fcall(r, "vigil_fold", keys.fold_keys(),
                            [GROUP, maxlen, *fold_args(entries)])
    except ResponseError as exc:
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


async def fold_one_or_dead(r: aioredis.Redis, keys: Keys, entry: Entry,
                           maxlen: int) -> list[str]:
    try:
        return await fold(r, keys, [entry], maxlen)
    except ResponseError as exc:
        entry_id, fields = entry
        raw = (fields or {}).get(b"data", b"")
        await fcall(r, "vigil_fold", keys.fold_keys(),
                    [GROUP, maxlen, "D", entry_id, f"fold failed: {exc}", raw[:4000], *PAD])
        metrics.DEAD.inc()
        return []
