"""REST: instances, summary, transition history, health and metrics."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response

from services.gateway.auth import query_problem, token_ok
from shared.keys import Keys
from shared.redis import TRANSIENT
from shared.schema import encoder, transition_decoder
from shared.status import HistoryGone, history_page, parse_stream_id, read_snapshot

MAX_LIMIT = 1000
READY_PING_TIMEOUT = 1.0
RECENT_PER_INSTANCE = 20
SCAN_FOR_INSTANCE = 5000  # entries scanned when filtering history by instance


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return encoder.encode(content)


def error(status: int, field: str | None, message: str) -> JSON:
    return JSON({"error": {"field": field, "message": message}}, status_code=status)


def _guard(request: Request, params: tuple[str, ...] = ()) -> JSON | None:
    """The token, then the query: only ``params`` (and ``token``), each once, not empty."""
    if not token_ok(request, request.app.state.settings.api_token):
        return JSON({"error": {"field": "token", "message": "missing or wrong API token"}},
                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
    if (problem := query_problem(request, params)) is not None:
        return error(400, *problem)
    return None


def _entry(entry_id: bytes, fields: dict[bytes, bytes]) -> dict[str, Any] | None:
    try:
        t = transition_decoder.decode(fields[b"data"])
    except (KeyError, msgspec.DecodeError):
        return None
    return {"id": entry_id.decode(), **msgspec.to_builtins(t)}


async def instances(request: Request) -> Response:
    if (denied := _guard(request)) is not None:
        return denied
    snap = await read_snapshot(request.app.state.redis, request.app.state.keys)
    return JSON({"instances": snap.instances, "summary": snap.summary, "cursor": snap.cursor})


async def instance(request: Request) -> Response:
    if (denied := _guard(request)) is not None:
        return denied
    ident = request.path_params["id"]
    keys: Keys = request.app.state.keys
    snap = await read_snapshot(request.app.state.redis, keys)
    found = next((s for s in snap.instances if s.id == ident), None)
    if found is None:
        return error(404, "id", f"no instance with id {ident[:64]!r}")
    recent = await _history(request, keys, None, RECENT_PER_INSTANCE, ident, newest=True)
    return JSON({"instance": found, "transitions": recent.items})


async def summary(request: Request) -> Response:
    if (denied := _guard(request)) is not None:
        return denied
    snap = await read_snapshot(request.app.state.redis, request.app.state.keys)
    return JSON(snap.summary)


async def transitions(request: Request) -> Response:
    """Page through history: ``since`` (exclusive, oldest first) or the newest ``limit``."""
    if (denied := _guard(request, ("since", "limit", "instance"))) is not None:
        return denied
    q = request.query_params
    since = q.get("since")
    parsed = parse_stream_id(since) if since is not None else None
    if since is not None and parsed is None:
        return error(400, "since", "must be a transition id like 1733241600123-0")
    if parsed is not None:
        since = f"{parsed[0]}-{parsed[1]}"  # "0" is "0-0", the very beginning
    raw_limit = q.get("limit", "100")
    if not re.fullmatch(r"[0-9]{1,4}", raw_limit, re.ASCII) or not 1 <= int(raw_limit) <= MAX_LIMIT:
        return error(400, "limit", f"must be an integer from 1 to {MAX_LIMIT}")
    keys: Keys = request.app.state.keys
    page = await _history(request, keys, since, int(raw_limit), q.get("instance"),
                          newest=since is None)
    items = page.items
    # Where the next page starts: after the last entry returned, or, when a filter or
    # entries that do not decode left the page short, after the last one looked at, so
    # that paging goes on past them instead of stopping.
    nxt = items[-1]["id"] if items and len(items) == int(raw_limit) else page.scanned or since
    return JSON({"transitions": items, "next": nxt, "gap": page.gap})


class _Page(msgspec.Struct):
    items: list[dict[str, Any]]
    scanned: str | None  # the id of the newest entry looked at
    gap: bool = False  # entries after ``since`` were trimmed: the page starts at the oldest kept


async def _history(request: Request, keys: Keys, since: str | None, limit: int,
                   ident: str | None, *, newest: bool) -> _Page:
    """A page of history, oldest first."""
    r = request.app.state.redis
    scan = limit if ident is None else SCAN_FOR_INSTANCE
    gap = False
    if newest:
        raw = list(reversed(await r.xrevrange(keys.transitions, count=scan)))
    else:
        try:
            raw = await history_page(r, keys, str(since), scan)
        except HistoryGone:
            gap = True
            raw = await r.xrange(keys.transitions, count=scan)
    out = [e for e in (_entry(i, f) for i, f in raw) if e is not None]
    if ident is not None:
        out = [e for e in out if e["instance"] == ident]
    if newest:
        return _Page(out[-limit:], raw[-1][0].decode() if raw else None)
    if len(out) > limit:  # the page ends at its last entry; the rest comes next time
        return _Page(out[:limit], out[limit - 1]["id"], gap)
    return _Page(out, raw[-1][0].decode() if raw else None, gap)


async def healthz(request: Request) -> Response:
    return JSON({"status": "ok"})


async def readyz(request: Request) -> Response:
    state = request.app.state
    problems = []
    if state.draining:
        problems.append("draining")
    if not state.hub.running:
        problems.append("transitions reader not running")
    elif not state.hub.positioned.is_set():
        problems.append("transitions reader not started (redis unreachable since start?)")
    try:  # bounded: a stalled Redis must answer 503 within a kubelet probe's timeout
        await asyncio.wait_for(state.redis.ping(), READY_PING_TIMEOUT)
    except (TimeoutError, *TRANSIENT):
        problems.append("redis unreachable")
    if problems:
        return JSON({"status": "not ready", "problems": problems}, status_code=503)
    return JSON({"status": "ready"})


async def metrics(request: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
