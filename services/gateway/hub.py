"""One reader of the transitions stream per gateway process, fanning out to local clients.

Each event is decoded and encoded once, then put on every client's bounded queue
without waiting: a client whose queue is full is kicked (1013) and resumes with
``since``; the broadcaster never waits for the slowest client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import redis.asyncio as aioredis
from prometheus_client import Counter, Gauge

from services.gateway.transport import text_frame
from shared.keys import Keys
from shared.redis import TRANSIENT
from shared.schema import Transition, encoder, transition_decoder
from shared.status import HistoryGone, history_page, parse_stream_id, read_snapshot

log = logging.getLogger("vigil.gateway.hub")

CLIENTS = Gauge("vigil_ws_clients", "Connected WebSocket clients")
KICKED = Counter("vigil_ws_clients_kicked_total", "Clients closed for not keeping up")
READ = Counter("vigil_gateway_transitions_read_total", "Transitions read from the stream")
SENT = Counter("vigil_ws_frames_sent_total", "Transition frames fanned out to clients",
               ["path"])  # direct: written at once; queued: through the client's queue
_DIRECT, _QUEUED = SENT.labels("direct"), SENT.labels("queued")
GARBAGE = Counter("vigil_gateway_bad_entries_total", "Transition entries that did not decode")
TRIMMED_UNREAD = "transitions trimmed before this gateway could send them"
ORIGIN_CHECK = 2.0  # seconds between checks that Redis still has the same history
SNAPSHOT_TTL = 1.0  # seconds a snapshot frame is shared by clients that connect meanwhile

StreamId = tuple[int, int]


class Reset:
    """Queued to every client to make it start over from a fresh snapshot.

    ``announce``: tell the client first with a ``reset`` frame (its history is gone, as
    when Redis lost its data). Without it the client just gets a new snapshot, which
    replaces what it shows (the inventory changed: instances added, removed or renamed).
    """

    def __init__(self, reason: str, announce: bool = True, inventory: str = "") -> None:
        self.reason = reason
        self.announce = announce
        self.inventory = inventory  # for an inventory change: the version it changed to


@dataclass(eq=False)
class Client:
    queue: asyncio.Queue[tuple[StreamId, str] | Reset]
    task: asyncio.Task[None] | None = None
    close_code: int | None = None
    close_reason: str = ""
    last: StreamId = (0, 0)
    inventory: str = ""  # inventory version of the last snapshot sent
    # The server's fast path (services.gateway.transport), if it offers one: write a whole
    # frame now, False when it cannot. Used only while ``live``: the session is caught up
    # and waiting on an empty queue, so nothing it has yet to send can be overtaken.
    write: Callable[[bytes], bool] | None = None
    live: bool = False
    # Held while a message goes out in fragments (a snapshot) and by the receiver's replies,
    # so that no data frame lands between two fragments.
    sending: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Set once the session sent what a client gets first (its snapshot, or the start of
    # its resume): the receiver's replies (pong, errors) wait for it.
    greeted: asyncio.Event = field(default_factory=asyncio.Event)

    def kick(self, code: int, reason: str) -> None:
        """Close this client from outside its own task (full queue, shutdown)."""
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
            if self.task is not None:
                self.task.cancel()


class TransitionFrame(Transition, kw_only=True, tag="transition", tag_field="type"):
    id: str


def frame(entry_id: str, data: bytes) -> str:
    """The WebSocket frame for a transition entry, built from the decoded message.

    Decoding and re-encoding (once per event, not per client) means only what the
    schema knows reaches clients: an entry written by anyone else cannot smuggle in its
    own ``type`` or ``id``, nor malformed JSON.
    """
    t = transition_decoder.decode(data)
    return encoder.encode(TransitionFrame(
        id=entry_id, instance=t.instance, name=t.name, from_=t.from_, to=t.to, at=t.at,
        reason=t.reason, message=t.message, summary=t.summary)).decode()


class Hub:
    def __init__(self, r: aioredis.Redis, keys: Keys, queue_size: int,
                 reader: aioredis.Redis | None = None):
        self.redis = r  # sessions' reads (snapshots, catch-up)
        # The reader's own connection: behind a reconnect storm's reads on the shared pool,
        # every live client would wait.
        self._reader = reader or r
        self._keys = keys
        self._queue_size = queue_size
        self.clients: set[Client] = set()
        self._no_clients = asyncio.Event()
        self._no_clients.set()
        self.running = False
        self.healthy = False
        self._origin: bytes | None = None
        self._inventory: bytes | None = None
        self._inventory_known = False
        self._origin_unsure = True  # no origin seen since start or since the last error
        # read at, JSON, cursor, inventory version
        self._snapshot: tuple[float, bytes, str, str] | None = None
        self._snapshot_lock = asyncio.Lock()
        self._generation = 0  # bumped by every broadcast reset: older snapshot reads are void
        # Set once the reader knows where in the stream it starts. A session must not go
        # live before: the reader would start after the session's catch-up and skip
        # whatever came in between (a gateway started before its Redis).
        self.positioned = asyncio.Event()

    def new_client(self) -> Client:
        client = Client(queue=asyncio.Queue(self._queue_size))
        self.clients.add(client)
        self._no_clients.clear()
        CLIENTS.set(len(self.clients))
        return client

    def remove(self, client: Client) -> None:
        self.clients.discard(client)
        if not self.clients:
            self._no_clients.set()
        CLIENTS.set(len(self.clients))

    async def wait_no_clients(self, seconds: float) -> bool:
        """Until every client's session has ended (its close frame sent); False on timeout."""
        try:
            await asyncio.wait_for(self._no_clients.wait(), seconds)
        except TimeoutError:
            return False
        return True

    def _offer(self, client: Client, item: tuple[StreamId, str] | Reset) -> None:
        try:
            client.queue.put_nowait(item)
        except asyncio.QueueFull:
            KICKED.inc()
            client.kick(1013, "too slow: reconnect with since")

    async def snapshot(self, not_before: StreamId = (0, 0)) -> tuple[bytes, str, str]:
        """A snapshot message (JSON, cursor, inventory version), read and encoded at most once
        per ``SNAPSHOT_TTL`` however many clients connect (a reconnect storm after a restart
        costs one read, not one per client).

        Sharing is safe at any age: each client catches up from the snapshot's cursor
        before it goes live — unless the client was already sent events after that cursor
        (``not_before``): they would come twice, so it gets a fresh one. A reset (history
        lost, inventory changed) drops it at once.
        """
        loop = asyncio.get_running_loop()
        async with self._snapshot_lock:
            cached = self._snapshot
            if (cached is not None and loop.time() - cached[0] < SNAPSHOT_TTL
                    and (parse_stream_id(cached[2]) or (0, 0)) >= not_before):
                return cached[1:]
            started, generation = loop.time(), self._generation
            snap = await read_snapshot(self.redis, self._keys)
            data = encoder.encode({
                "type": "snapshot", "cursor": snap.cursor, "summary": snap.summary,
                "instances": snap.instances,
            })
            if generation == self._generation:  # no reset while it was read: shareable
                self._snapshot = (started, data, snap.cursor, snap.inventory)
            return data, snap.cursor, snap.inventory

    def forget_snapshot(self, cursor: str) -> None:
        """A client could not catch up from ``cursor`` (trimmed): no one gets that snapshot
        again, or every client would loop through reset and the same snapshot until it
        expired."""
        if self._snapshot is not None and self._snapshot[2] == cursor:
            self._snapshot = None

    def broadcast(self, item: Reset) -> None:
        self._snapshot = None
        self._generation += 1
        for client in list(self.clients):
            if client.close_code is None:
                client.live = False
                self._offer(client, item)

    def fan_out(self, sid: StreamId, text: str) -> None:
        """One event to every client: the frame is built once; caught-up clients get it
        written at once, the others through their queue (in order, after what they have)."""
        framed = text_frame(text.encode())
        direct = queued = 0
        for client in list(self.clients):
            if client.close_code is not None:
                continue
            if client.live and client.write is not None:
                if sid <= client.last:
                    continue  # its catch-up read it from the stream before this reader did
                if client.write(framed):
                    client.last = sid
                    direct += 1
                    continue
            client.live = False
            queued += 1
            self._offer(client, (sid, text))
        _DIRECT.inc(direct)
        _QUEUED.inc(queued)

    def close_all(self, code: int, reason: str) -> None:
        for client in list(self.clients):
            client.kick(code, reason)

    async def _start_id(self) -> str:
        try:
            info = await self._reader.xinfo_stream(self._keys.transitions)
        except aioredis.ResponseError:
            return "0-0"  # no stream yet: everything that comes is new
        last = info["last-generated-id"]
        return last.decode() if isinstance(last, bytes) else str(last)

    async def run(self, stop: asyncio.Event) -> None:
        """Read transitions until ``stop``; reconnect with backoff; detect lost history."""
        failures = 0
        last: str | None = None
        loop = asyncio.get_running_loop()
        next_check = 0.0
        self.running = True
        try:
            while not stop.is_set():
                try:
                    if last is None:
                        start = await self._start_id()
                        self._origin = await self._get_origin()
                        last = start
                        self.positioned.set()
                    if loop.time() >= next_check:
                        next_check = loop.time() + ORIGIN_CHECK
                        last = await self._check_origin(last)
                    # XREAD only waits for news; the entries are read by vigil_history,
                    # which checks in the same atomic call that none after ``last`` were
                    # trimmed (a reader paused or cut off from Redis longer than the
                    # stream's retention) and that ``last`` is of this Redis' history (a
                    # FLUSHALL): either way clients get a reset, never a silent gap.
                    news: Any = await self._reader.xread({self._keys.transitions: last},
                                                         count=1, block=1000)
                    if news and self._origin_unsure:
                        # History appeared while we could not tell whether it is the one
                        # we know: settle that before anything reaches a client.
                        checked = await self._check_origin(last)
                        if checked != last:
                            last = checked
                            continue
                    entries = []
                    if news:
                        try:
                            entries = await history_page(self._reader, self._keys, last, 500)
                        except HistoryGone as gone:
                            last = await self._history_gone(last, str(gone))
                            continue
                    self.healthy = True
                    failures = 0
                    for entry_id, fields in entries:
                        last = entry_id.decode()
                        self._deliver(last, fields)
                except TRANSIENT as exc:
                    self.healthy = False
                    # Redis may come back without its data: check before reading on, so
                    # that no client gets new-history transitions before its reset.
                    next_check = 0.0
                    self._origin_unsure = True
                    failures += 1
                    delay = min(5.0, 0.05 * 2 ** min(failures, 10))
                    log.warning("transitions reader: redis unavailable (%s); retry in %.2fs",
                                exc, delay)
                    await asyncio.sleep(delay)
                except Exception:
                    failures += 1
                    log.exception("transitions reader error; carrying on")
                    await asyncio.sleep(min(5.0, 0.05 * 2 ** min(failures, 10)))
        finally:
            self.running = False

    async def _history_gone(self, last: str, reason: str) -> str:
        """Transitions after ``last`` are not all there: every client starts over from a
        snapshot; the reader goes on from the newest (snapshots are read after it)."""
        checked = await self._check_origin(last)  # a new origin: Redis lost its data
        if checked != last:
            return checked
        start = await self._start_id()
        log.warning("transitions after %s left the stream before this gateway read them "
                    "(%s): sending reset to %d clients", last, reason, len(self.clients))
        self.broadcast(Reset(TRIMMED_UNREAD))
        return start

    def _deliver(self, entry_id: str, fields: dict[bytes, bytes]) -> None:
        sid = parse_stream_id(entry_id)
        try:
            text = frame(entry_id, fields[b"data"])
        except (KeyError, msgspec.DecodeError, UnicodeDecodeError) as exc:
            GARBAGE.inc()
            log.error("transition %s is not valid (%s); skipped", entry_id, exc)
            return
        assert sid is not None
        READ.inc()
        self.fan_out(sid, text)

    async def _get_origin(self) -> bytes | None:
        origin: Any = await self._reader.get(self._keys.origin)
        return origin if isinstance(origin, bytes) or origin is None else str(origin).encode()

    async def _check_origin(self, last: str) -> str:
        """A new origin means Redis lost its data: every client must start over.

        A new inventory version means instances came or went: clients get a new snapshot.
        """
        version: Any = await self._reader.get(self._keys.inventory_version)
        if version is not None and version != self._inventory:
            if self._inventory_known:
                log.info("inventory changed: sending a fresh snapshot to %d clients",
                         len(self.clients))
                self.broadcast(Reset("inventory changed", announce=False,
                                     inventory=version.decode()))
            self._inventory = version
        self._inventory_known = True
        origin = await self._get_origin()
        self._origin_unsure = origin is None
        if origin is None or origin == self._origin:
            return last
        if self._origin is not None:
            log.warning("transition history was reset in redis (restart without data?): "
                        "sending reset to %d clients", len(self.clients))
            self.broadcast(Reset("history lost: redis restarted without its data"))
            last = origin.decode()
        self._origin = origin
        return last
