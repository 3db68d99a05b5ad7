"""The gateway at its edges: started before its Redis, history trimmed under a reader,
large snapshots to clients that do not read, and a drain with many clients connected.

Probe results are injected (nothing is probed); real gateway processes serve real
WebSocket clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import threading
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection

from tests.support.rawws import (
    Reader,
    never_reading_client,
    rss_kib,
    unread_bytes,
)
from tests.support.vigil import Stack, recv_json
from tests.support.wait import free_port, wait_for


def key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def frames_until_quiet(ws: ClientConnection, quiet: float = 1.0) -> list[dict[str, Any]]:
    out = []
    while True:
        try:
            out.append(json.loads(ws.recv(timeout=quiet)))
        except TimeoutError:
            return out


def test_a_gateway_started_before_redis_loses_nothing_for_clients_that_connect_at_once(
        service_factory, redis_server, tmp_path, prefix):
    stack = Stack(service_factory, redis_server.url, tmp_path, prefix,
                  [{"id": "a", "host": "127.0.0.1", "port": free_port(), "rise": 1, "fall": 1}])
    try:
        redis_server.stop()
        gateway = service_factory("services.gateway", stack.env, name="gateway")
        # Its reader has failed a few times and now sleeps its longest back-off (5 s).
        wait_for(lambda: "retry in 5.00s" in gateway.log(), 30, message="reader backing off")
        redis_server.start()
        stack.start("state")
        with stack.ws() as ws:  # the gateway accepts: uvicorn does not need Redis
            ids = stack.flap("a", 3)  # while the reader still sleeps
            frames = [recv_json(ws, timeout=20)]  # the snapshot, whenever it comes
            more = stack.flap("a", 2)
            while not frames or frames[-1].get("id") != more[-1]:
                frames.append(recv_json(ws))
            frames += frames_until_quiet(ws)
        assert frames and frames[0]["type"] == "snapshot", frames
        cursor = frames[0]["cursor"]
        got = [f["id"] for f in frames[1:]]
        assert all(f["type"] == "transition" for f in frames[1:]), frames
        # Everything after the snapshot's cursor, once, in order: none lost to a reader that
        # started reading after this client went live.
        assert got == [i for i in ids + more if key(i) > key(cursor)], (cursor, got)
        assert more[-1] in got
    finally:
        stack.close()


@pytest.fixture
def stack(service_factory, redis_server, tmp_path, prefix):
    s = Stack(service_factory, redis_server.url, tmp_path, prefix, [
        {"id": "a", "name": "Alpha", "host": "127.0.0.1", "port": free_port(),
         "rise": 1, "fall": 1},
    ], extra_env={"VIGIL_WS_QUEUE": "5000"})
    s.start("state", "gateway")
    yield s
    s.close()


def add_transitions(stack: Stack, n: int, message_size: int) -> list[str]:
    """XADD ``n`` well-formed transitions straight to the stream, as the fold would."""
    body = json.dumps({"instance": "a", "name": "Alpha", "from": "running", "to": "error",
                       "at": "2026-12-03T16:00:00.123Z", "reason": "refused",
                       "message": "x" * message_size,
                       "summary": {"total": 1, "running": 0, "error": 1, "unknown": 0}})
    pipe = stack.redis.pipeline(transaction=False)
    for _ in range(n):
        pipe.xadd(f"{stack.prefix}:transitions", {"data": body})
    return [i.decode() for i in pipe.execute()]


def test_transitions_trimmed_before_the_reader_got_them_give_live_clients_a_reset(stack):
    """A gateway paused (or cut off from Redis) for longer than the stream's retention:
    connected clients get a reset and a snapshot, never a silent gap."""
    gateway = stack.services["gateway"]
    with stack.ws() as ws, stack.ws() as other:
        assert recv_json(ws)["type"] == recv_json(other)["type"] == "snapshot"
        before = add_transitions(stack, 3, 10)
        assert [recv_json(ws)["id"] for _ in range(3)] == before
        assert [recv_json(other)["id"] for _ in range(3)] == before
        gateway.signal(signal.SIGSTOP)
        try:
            ids = add_transitions(stack, 200, 10)
            stack.redis.xtrim(f"{stack.prefix}:transitions", maxlen=50, approximate=False)
        finally:
            gateway.signal(signal.SIGCONT)
        after = add_transitions(stack, 2, 10)
        for client in (ws, other):
            frames = frames_until_quiet(client)
            kinds = [f["type"] for f in frames]
            assert kinds[:2] == ["reset", "snapshot"], kinds
            assert frames[0]["reason"] == "transitions trimmed before this gateway could send them"
            cursor = frames[1]["cursor"]
            got = [f["id"] for f in frames[2:]]
            # After the snapshot: everything after its cursor, once, in order.
            assert got == [i for i in ids[-50:] + after if key(i) > key(cursor)], (cursor, got)
            assert after[-1] in got or key(cursor) >= key(after[-1])


def test_after_a_flushall_no_new_history_reaches_a_client_before_its_reset(stack):
    """Redis lost its data without dropping the gateway's connection (FLUSHALL): the
    reader must not pass on transitions of the new history before the reset."""
    with stack.ws() as ws:
        assert recv_json(ws)["type"] == "snapshot"
        old = add_transitions(stack, 2, 10)
        assert [recv_json(ws)["id"] for _ in range(2)] == old
        stack.redis.flushall()
        wait_for(lambda: stack.redis.get(f"{stack.prefix}:inventory:version"), 20,
                 message="the state service loads the inventory again")
        new = stack.flap("a", 2)  # the fold writes a new origin, then the transitions
        frames = frames_until_quiet(ws)
        kinds = [f["type"] for f in frames]
        assert "reset" in kinds, kinds
        first_reset = kinds.index("reset")
        assert all(f["type"] != "transition" for f in frames[:first_reset]), frames
        assert frames[first_reset]["reason"] == "history lost: redis restarted without its data"
        assert kinds[first_reset + 1] == "snapshot"
        assert new[-1] in [f.get("id") for f in frames] or \
            key(frames[-1].get("cursor", "0-0")) >= key(new[-1])


def test_a_shared_snapshot_that_could_not_be_caught_up_from_is_not_shared_again(stack):
    """The session forgets the shared snapshot whose catch-up failed (trimmed), or every
    client would loop through reset and that same snapshot until it expired."""
    from services.gateway.hub import Hub
    from shared.keys import Keys

    async def run() -> tuple[str, str, str]:
        r = aioredis.from_url(stack.env["VIGIL_REDIS_URL"])
        try:
            hub = Hub(r, Keys(stack.prefix), 10)
            _, first, _ = await hub.snapshot()
            add_transitions(stack, 3, 10)
            _, shared, _ = await hub.snapshot(not_before=key(first))
            hub.forget_snapshot(first)  # what the session does when catch-up fails
            _, fresh, _ = await hub.snapshot(not_before=key(first))
            return first, shared, fresh
        finally:
            await r.aclose()

    first, shared, fresh = asyncio.run(run())
    assert shared == first  # shared while young: a reconnect storm costs one read
    assert key(fresh) > key(first)


def test_history_trimmed_while_a_client_catches_up_gives_reset_then_snapshot(stack):
    # Three catch-up pages (500 entries each) of ~12 KB frames: the first page alone (6 MB)
    # is more than every buffer between the gateway and a client that reads nothing (the
    # kernel's send buffer grows to 4 MB on loopback).
    ids = add_transitions(stack, 1200, 12_000)
    sock = never_reading_client(stack.port, "", f"&since={ids[0]}")
    try:
        # Its buffers fill up and the gateway's session waits inside the first page.
        wait_for(lambda: unread_bytes(sock) >= 2048, 10, message="the client's buffer full")
        stack.redis.xtrim(f"{stack.prefix}:transitions", maxlen=100, approximate=False)
        frames, reader = [], Reader(sock)
        with contextlib.suppress(TimeoutError):
            while True:
                frames.append(json.loads(reader.message(timeout=2.0)))
    finally:
        sock.close()
    kinds = [f["type"] for f in frames]
    assert "reset" in kinds, (len(kinds), kinds[-3:], frames[-1].get("id"), ids[-1])
    at = kinds.index("reset")
    sent = [f["id"] for f in frames[:at]]
    assert sent == ids[1:1 + len(sent)]  # in order, none skipped, up to the trim
    assert 0 < len(sent) < len(ids) - 1  # cut short: the test did what it meant to
    assert frames[at]["reason"] == "resume point no longer available"
    assert frames[at + 1]["type"] == "snapshot" and frames[at + 1]["cursor"] == ids[-1]
    assert kinds[at + 2:] == []


def test_history_paged_from_a_trimmed_point_says_there_is_a_gap(stack):
    ids = stack.flap("a", 6)
    stack.redis.xtrim(f"{stack.prefix}:transitions", maxlen=2, approximate=False)
    page = stack.get("/api/transitions", since=ids[1])
    assert page["gap"] is True
    assert [t["id"] for t in page["transitions"]] == ids[4:]  # from the oldest kept
    page = stack.get("/api/transitions", since=ids[4])
    assert page["gap"] is False and [t["id"] for t in page["transitions"]] == ids[5:]


def test_a_drain_turns_readiness_off_then_closes_every_one_of_many_clients_with_1001(stack):
    codes: list[int | None] = []
    seen: list[int | str] = []  # /readyz answers, polled all through the drain
    done = threading.Event()

    def poll() -> None:
        with httpx.Client(base_url=stack.http.base_url, timeout=2) as http:
            while not done.is_set():
                try:
                    seen.append(http.get("/readyz").status_code)
                except httpx.HTTPError:
                    seen.append("gone")

    with contextlib.ExitStack() as opened:
        clients = [opened.enter_context(stack.ws()) for _ in range(300)]
        for ws in clients:
            assert recv_json(ws)["type"] == "snapshot"
        poller = threading.Thread(target=poll)
        poller.start()
        try:
            wait_for(lambda: 200 in seen, 10, message="ready before the drain")
            assert stack.services["gateway"].stop() == 0
        finally:
            done.set()
            poller.join()
        for ws in clients:
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    ws.recv(timeout=10)
            codes.append(closed.value.rcvd.code if closed.value.rcvd else None)
    assert codes == [1001] * len(clients), {c: codes.count(c) for c in set(codes)}
    # Ready, then not ready while the clients were being closed, then gone; never back.
    order = [k for i, k in enumerate(seen) if i == 0 or seen[i - 1] != k]
    assert order == [200, 503, "gone"], order


def test_a_large_snapshot_to_clients_that_do_not_read_holds_little_memory(
        service_factory, redis_server, tmp_path, prefix):
    nobody = free_port()
    stack = Stack(service_factory, redis_server.url, tmp_path, prefix,
                  [{"id": f"db-{i:04d}", "name": f"database number {i} " + "x" * 100,
                    "host": "127.0.0.1", "port": nobody, "tags": ["prod", "rack-7"]}
                   for i in range(2000)])
    stuck: list[socket.socket] = []
    try:
        stack.start("state", "gateway")
        gateway = stack.services["gateway"]
        with stack.ws() as ws:  # a client that reads gets the whole snapshot, intact
            raw = ws.recv(timeout=10)
        snap = json.loads(raw)
        assert snap["type"] == "snapshot" and len(snap["instances"]) == 2000
        size = len(raw)  # ASCII JSON
        assert size > 400_000  # large enough that a copy per client would show
        before = rss_kib(gateway.pid)
        stuck = [never_reading_client(stack.port, "") for _ in range(60)]
        # Each has had its snapshot partly sent, the rest pending in the gateway.
        wait_for(lambda: all(unread_bytes(s) > 0 for s in stuck), 10,
                 message="snapshots on their way")
        growth = (rss_kib(gateway.pid) - before) * 1024
        per_client = growth / len(stuck)
        print(f"snapshot {size / 1024:.0f} KiB; gateway grew {growth / 2**20:.1f} MiB for "
              f"{len(stuck)} clients that do not read ({per_client / 1024:.0f} KiB each)")
        assert per_client < size / 3, "each client that does not read holds its own snapshot"
        # Others are served meanwhile.
        with stack.ws() as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "snapshot"
    finally:
        for s in stuck:
            s.close()
        stack.close()


def test_a_client_reading_a_large_snapshot_slowly_but_steadily_is_not_cut_off(
        service_factory, redis_server, tmp_path, prefix):
    nobody = free_port()
    stack = Stack(service_factory, redis_server.url, tmp_path, prefix,
                  [{"id": f"db-{i:04d}", "name": "n" * 60, "host": "127.0.0.1", "port": nobody}
                   for i in range(800)],
                  extra_env={"VIGIL_WS_PING": "2"})  # a peer stalled for 4 s is cut off
    try:
        stack.start("state", "gateway")
        with stack.ws() as ws:
            size = len(ws.recv(timeout=10))  # ASCII JSON
        rate = 30_000.0
        assert size / rate > 5, size  # longer to read than the stall limit
        sock = never_reading_client(stack.port, "")
        try:
            snap = json.loads(Reader(sock).message(timeout=60, bytes_per_s=rate))
        finally:
            sock.close()
        assert snap["type"] == "snapshot" and len(snap["instances"]) == 800
    finally:
        stack.close()
