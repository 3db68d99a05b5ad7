"""The WebSocket session: snapshot (or resume), catch-up from the stream, then live events.

No gap and no duplicate at the boundary: the client is registered with the hub
*before* the snapshot is read, the stream is then read from the snapshot's cursor,
and live events are sent only when their id is after the last one sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from services.gateway.auth import origin_allowed, query_problem, refuse, token_ok
from services.gateway.hub import Client, Hub, Reset, frame
from shared.keys import Keys
from shared.lifecycle import cancel_and_wait
from shared.redis import retrying
from shared.schema import encoder
from shared.status import (
    INVENTORY_CHANGED,
    HistoryGone,
    history_page,
    parse_stream_id,
    resumable,
)

log = logging.getLogger("vigil.gateway.ws")
CATCH_UP_PAGE = 500
SESSION_RETRY = 3.0  # seconds a session retries a Redis read before it closes with 1011
POSITION_WAIT = 10.0  # seconds a new session waits for the hub's reader to find its place
T = TypeVar("T")
MAX_INCOMING = 4096


class _Incoming(msgspec.Struct):
    type: str


_incoming = msgspec.json.Decoder(_Incoming)


def error_frame(field: str, message: str) -> str:
    return encoder.encode({"type": "error", "field": field, "message": message}).decode()


async def endpoint(ws: WebSocket) -> None:
    app = ws.app.state
    if not origin_allowed(ws.headers, app.settings.allowed_origins):
        await refuse(ws.scope, ws.receive, ws.send, 403, "origin", "origin "
                             f"{ws.headers.get('origin', '')[:100]!r} is not allowed: same "
                             "origin or one listed in VIGIL_ALLOWED_ORIGINS")
        return
    if not token_ok(ws, app.settings.api_token):
        await refuse(ws.scope, ws.receive, ws.send, 401, "token",
                             "missing or wrong token (Authorization: Bearer, or ?token=)")
        return
    await ws.accept()
    if (problem := query_problem(ws, ("since",))) is not None:
        await ws.send_text(error_frame(*problem))
        await ws.close(code=1008, reason=f"bad query parameter {problem[0]}")
        return
    since = ws.query_params.get("since")
    if since is not None and parse_stream_id(since) is None:
        await ws.send_text(error_frame("since", f"not a transition id: {since[:64]!r}"))
        await ws.close(code=1008, reason="bad since")
        return
    if app.draining:
        await ws.close(code=1001, reason="server shutting down")
        return
    hub: Hub = app.hub
    client = hub.new_client()
    try:
        await _serve(ws, hub, app.keys, client, since)
    finally:
        # Only now, after the close frame: the drain waits for every client to be gone.
        hub.remove(client)


async def _serve(ws: WebSocket, hub: Hub, keys: Keys, client: Client, since: str | None) -> None:
    client.write = ws.scope.get("extensions", {}).get("vigil.write_frame")
    session = asyncio.create_task(_session(ws, hub, keys, client, since))
    client.task = session
    receiver = asyncio.create_task(_receive(ws, client))
    try:
        await asyncio.wait({session, receiver}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await cancel_and_wait(session, receiver)
    errors = [t.exception() for t in (session, receiver) if not t.cancelled()]
    error = next((e for e in errors if isinstance(e, Exception)), None)
    if error is not None and client.close_code is None:
        if isinstance(error, WebSocketDisconnect | ConnectionError):
            return  # the client went away
        # Redis unreachable for longer than the retries, most likely: the client should
        # come back with `since` and will lose nothing.
        log.warning("websocket session failed (%s: %s); closing with 1011",
                    type(error).__name__, error)
        client.close_code, client.close_reason = 1011, "server error: reconnect with since"
    if client.close_code is not None and ws.application_state == WebSocketState.CONNECTED:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(client.close_code, client.close_reason), 2)




async def _redis(call: Callable[[], Awaitable[T]]) -> T:
    """A session's read, retried briefly on transient errors (a pooled connection left
    stale by a Redis restart fails once)."""
    async for attempt in retrying(SESSION_RETRY):
        with attempt:
            return await call()
    raise AssertionError("unreachable: retrying() re-raises")


async def _session(ws: WebSocket, hub: Hub, keys: Keys, client: Client,
                   since: str | None) -> None:
    r = hub.redis
    # Registered with the hub already; not a step further until the reader knows where it
    # starts (else 1011 by the endpoint: the client comes back with since).
    await asyncio.wait_for(hub.positioned.wait(), POSITION_WAIT)
    cursor: str | None = None
    stale_inventory = False
    if since is not None:
        # Read before the verdict: "ok" means no inventory change after ``since`` up to
        # the verdict, so this is the version the client has. A hub that notices a change
        # late then sends no snapshot to a client that already resumed past it.
        version: Any = await _redis(lambda: r.get(keys.inventory_version))
        verdict = await _redis(lambda: resumable(r, keys, since))
        if verdict in ("ok", INVENTORY_CHANGED):
            cursor = since
            # Missed transitions first, then a snapshot: the instances changed meanwhile.
            stale_inventory = verdict == INVENTORY_CHANGED
            if verdict == "ok" and version is not None:
                client.inventory = version.decode()
        else:
            await ws.send_text(reset_frame(verdict))
    if cursor is not None:
        client.greeted.set()  # resumed: what comes first is the replay
    # ``close_code`` is checked as well as cancellation: a kick's cancel may be swallowed.
    while client.close_code is None:
        if cursor is None:
            cursor = await _snapshot(ws, hub, client)
            client.greeted.set()
        try:
            await _catch_up(ws, hub, keys, client, cursor)
        except HistoryGone as gone:  # trimmed while this client was catching up
            await ws.send_text(reset_frame(str(gone)))
            hub.forget_snapshot(cursor)  # the shared one may be the very one that failed
            stale_inventory, cursor = False, None
            continue
        if stale_inventory:
            stale_inventory, cursor = False, None
            continue
        reset = await _live(ws, client)
        if reset is None:
            return
        if reset.announce:
            await ws.send_text(reset_frame(reset.reason))
        cursor = None


def reset_frame(reason: str) -> str:
    return encoder.encode({"type": "reset", "reason": reason}).decode()


async def _snapshot(ws: WebSocket, hub: Hub, client: Client) -> str:
    """Send a snapshot that covers at least what this client was sent; return its cursor."""
    data, cursor, client.inventory = await _redis(
        lambda: hub.snapshot(not_before=client.last))
    send_long = ws.scope.get("extensions", {}).get("vigil.send_long")
    if send_long is None:
        await ws.send_text(data.decode())
    else:
        async with client.sending:  # no reply of the receiver between its fragments
            try:
                await send_long(data)
            except OSError as exc:  # as Starlette's own send would say it
                raise WebSocketDisconnect(1006) from exc
    return cursor


async def _catch_up(ws: WebSocket, hub: Hub, keys: Keys, client: Client, cursor: str) -> None:
    """Send every transition after ``cursor`` that is already in the stream, advancing
    ``client.last``; ``HistoryGone`` if some were trimmed before they could be read."""
    client.last = parse_stream_id(cursor) or (0, 0)
    after = cursor
    while True:
        page = await _redis(functools.partial(
            history_page, hub.redis, keys, after, CATCH_UP_PAGE))
        for entry_id, fields in page:
            after = entry_id.decode()
            try:
                text = frame(after, fields[b"data"])
            except (KeyError, msgspec.DecodeError, UnicodeDecodeError):
                continue  # the hub counts and logs garbage; clients never see it
            await ws.send_text(text)
            client.last = parse_stream_id(after) or client.last
        if len(page) < CATCH_UP_PAGE:
            return


async def _live(ws: WebSocket, client: Client) -> Reset | None:
    """Send queued events until a reset (None when this client was closed meanwhile)."""
    while client.close_code is None:
        if client.queue.empty():
            client.live = True  # caught up: the hub may write to this client directly
        item = await client.queue.get()
        client.live = False
        if isinstance(item, Reset):
            if not item.announce and item.inventory == client.inventory:
                continue  # this client's snapshot already shows that inventory
            return item
        sid, text = item
        if sid <= client.last:
            continue  # already sent during catch-up
        await ws.send_text(text)
        client.last = sid
    return None


async def _reply(ws: WebSocket, client: Client, text: str) -> None:
    await client.greeted.wait()  # the snapshot (or reset) comes first, as the README says
    async with client.sending:
        await ws.send_text(text)


async def _receive(ws: WebSocket, client: Client) -> None:
    """Read what the client sends: only ``{"type": "ping"}`` is expected."""
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
            data = msg.get("text")
            if data is None:
                data_b = msg.get("bytes") or b""
                if len(data_b) > MAX_INCOMING:
                    client.kick(1009, "frame too large")
                    return
                await _reply(ws, client, error_frame("frame", "binary frames are not accepted"))
                continue
            if len(data) > MAX_INCOMING:
                client.kick(1009, "frame too large")
                return
            try:
                kind = _incoming.decode(data).type
            except msgspec.DecodeError as exc:
                await _reply(ws, client, error_frame("frame", f"not a valid message: {exc}"))
                continue
            await _reply(ws, client, '{"type":"pong"}' if kind == "ping" else
                         error_frame("type", f"unknown message type {kind[:32]!r}"))
