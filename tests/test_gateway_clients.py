"""The gateway and its clients: resume across restarts and replicas, slow clients, who may in.

Probe results are injected (nothing is probed); one or two real gateway processes serve
real WebSocket clients.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import random
import re
import socket
import struct
import threading
import time
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.support.rawws import Reader as RawReader
from tests.support.rawws import never_reading_client, rss_kib, tcp_established
from tests.support.vigil import Stack, recv_json, write_inventory
from tests.support.wait import wait_for

TOKEN = "tok-123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def stack(service_factory, redis_server, tmp_path, prefix):
    s = Stack(service_factory, redis_server.url, tmp_path, prefix, [
        {"id": "a", "name": "Alpha", "host": "10.0.0.1", "rise": 1, "fall": 1},
    ], extra_env={"VIGIL_API_TOKEN": TOKEN, "VIGIL_WS_QUEUE": "500"})
    s.http.headers.update(AUTH)
    s.start("state", "gateway")
    yield s
    s.close()


def ids_of(ws: Any, n: int) -> list[str]:
    frames = [recv_json(ws) for _ in range(n)]
    assert all(f["type"] == "transition" for f in frames), frames
    return [f["id"] for f in frames]


def assert_quiet(ws: Any, seconds: float = 0.5) -> None:
    """Nothing more arrives (no duplicate, no stray frame)."""
    with pytest.raises(TimeoutError):
        ws.recv(timeout=seconds)


def test_resume_after_a_restart_and_on_another_gateway_loses_and_doubles_nothing(stack):
    _, other = stack.gateway("gateway-b")
    with stack.ws(headers=AUTH) as ws:
        assert recv_json(ws)["type"] == "snapshot"
        first = stack.flap("a", 3)
        assert ids_of(ws, 3) == first
        assert stack.services["gateway"].stop() == 0  # SIGTERM: drained, exit 0
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    missed = stack.flap("a", 3)  # while this client is away
    with stack.ws(since=first[-1], port=other, headers=AUTH) as ws:
        assert ids_of(ws, 3) == missed  # no snapshot, no reset: straight on
        live = stack.flap("a", 2)
        assert ids_of(ws, 2) == live
        assert_quiet(ws)
    stack.start("gateway")  # the restarted one serves the same history
    with stack.ws(since=first[-1], headers=AUTH) as ws:
        assert ids_of(ws, 5) == missed + live
        assert_quiet(ws)


def test_resume_from_a_trimmed_id_resets_then_sends_a_fresh_snapshot(stack):
    ids = stack.flap("a", 6)
    stack.redis.xtrim(f"{stack.prefix}:transitions", maxlen=2, approximate=False)
    with stack.ws(since=ids[1], headers=AUTH) as ws:
        reset = recv_json(ws)
        assert reset == {"type": "reset", "reason": "resume point no longer available"}
        snap = recv_json(ws)
        assert snap["type"] == "snapshot" and snap["cursor"] == ids[-1]
        more = stack.flap("a", 1)
        assert ids_of(ws, 1) == more
    with stack.ws(since=ids[3], headers=AUTH) as ws:  # was the last one trimmed: we cannot
        assert recv_json(ws)["type"] == "reset"       # tell, so it is reset too
        assert recv_json(ws)["type"] == "snapshot"
    with stack.ws(since=ids[4], headers=AUTH) as ws:  # the first one kept
        assert ids_of(ws, 2) == [ids[5], *more]


# --- a client that never reads ------------------------------------------------------------

class Reader(threading.Thread):
    """A client that reads every frame, collecting transition ids, until it has ``want``."""

    def __init__(self, stack: Stack, want: int) -> None:
        super().__init__(daemon=True)
        self.stack = stack
        self.want = want
        self.ids: list[str] = []
        self.error: BaseException | None = None
        self.ready = threading.Event()
        self.start()
        assert self.ready.wait(10) and self.error is None, self.error

    def run(self) -> None:
        try:
            with self.stack.ws(headers=AUTH) as ws:
                assert recv_json(ws)["type"] == "snapshot"
                self.ready.set()
                while len(self.ids) < self.want:
                    msg = json.loads(ws.recv(timeout=60))
                    self.ids.append(msg.get("id", msg["type"]))
        except BaseException as exc:
            self.error = exc
            self.ready.set()


def test_a_client_that_never_reads_is_cut_off_while_others_get_everything(stack):
    gateway = stack.services["gateway"]
    n, size = 20_000, 2_000  # ~44 MB of frames: far more than every buffer on the way
    stuck = never_reading_client(stack.port, TOKEN)
    readers = [Reader(stack, n) for _ in range(2)]
    rss_before = rss_kib(gateway.pid)
    key = f"{stack.prefix}:transitions"
    body = {"instance": "a", "name": "Alpha", "from": "running", "to": "error",
            "at": "2026-12-03T16:00:00.123Z", "reason": "refused", "message": "x" * size,
            "summary": {"total": 1, "running": 0, "error": 1, "unknown": 0}}
    sent: list[str] = []
    rss_peak = rss_before
    try:
        for _ in range(n // 200):
            pipe = stack.redis.pipeline(transaction=False)
            for _ in range(200):
                pipe.xadd(key, {"data": json.dumps(body)})
            sent.extend(i.decode() for i in pipe.execute())
            rss_peak = max(rss_peak, rss_kib(gateway.pid))
            # Paced to what the reading clients (threads of this process) can take: they
            # stay within their queue bound (500); the stuck one does not.
            wait_for(lambda: all(len(r.ids) >= len(sent) - 200 or r.error for r in readers),
                     30, interval=0.01, message="readers keep up")
        for r in readers:
            r.join(60)
            rss_peak = max(rss_peak, rss_kib(gateway.pid))
        for r in readers:
            assert r.error is None, r.error
            assert r.ids == sent  # every frame, in order, none twice
        # The stuck client was closed: its connection is gone from the gateway's side.
        local = stuck.getsockname()[1]
        wait_for(lambda: not tcp_established(stack.port, local), 10,
                 message="the gateway dropped the client that never reads")
        metrics = httpx.get(f"http://127.0.0.1:{stack.port}/metrics").text
        assert re.search(r"^vigil_ws_clients_kicked_total 1\.0$", metrics, re.M), metrics
        growth_mib = (rss_peak - rss_before) / 1024
        print(f"gateway RSS {rss_before / 1024:.0f} MiB before, peak growth {growth_mib:.1f} "
              f"MiB while {n * size / 2**20:.0f} MiB went to each client")
        assert growth_mib < 20, f"gateway grew {growth_mib:.0f} MiB: memory is not bounded"
    finally:
        stuck.close()


def test_a_slow_client_that_reads_on_gets_its_backlog_then_1013(stack):
    """Kicked for falling behind while its socket was full, a client that reads again
    gets what was already on its way, then a close frame with 1013 (not a reset)."""
    slow = never_reading_client(stack.port, TOKEN)
    key = f"{stack.prefix}:transitions"
    body = {"instance": "a", "name": "Alpha", "from": "running", "to": "error",
            "at": "2026-12-03T16:00:00.123Z", "reason": "refused", "message": "x" * 2_000,
            "summary": {"total": 1, "running": 0, "error": 1, "unknown": 0}}
    metrics = f"http://127.0.0.1:{stack.port}/metrics"

    def kicked() -> bool:
        return bool(re.search(r"^vigil_ws_clients_kicked_total 1\.0$", httpx.get(metrics).text,
                              re.M))

    try:
        while not kicked():  # more than its queue (500) and every buffer on the way
            pipe = stack.redis.pipeline(transaction=False)
            for _ in range(500):
                pipe.xadd(key, {"data": json.dumps(body)})
            pipe.execute()
        reader = RawReader(slow)
        got: list[str] = []
        with pytest.raises(ConnectionError) as closed:
            while True:
                message = json.loads(reader.message(timeout=10))
                got.append(message["type"])
        assert str(closed.value).endswith(f"{1013:04x}"), closed.value  # the close code
        assert got[0] == "snapshot" and set(got[1:]) == {"transition"}, set(got)
    finally:
        slow.close()


def test_one_reader_per_gateway_however_many_clients(stack, redis_server):
    """Each transition is read from Redis once per gateway and framed once, not once per
    client: Redis sees fewer XREADs than there are clients, and the gateway counts one read
    per transition."""
    n_clients, n_events = 100, 40
    metrics = f"http://127.0.0.1:{stack.port}/metrics"

    def counter(name: str) -> float:
        m = re.search(rf"^{name} (\S+)$", httpx.get(metrics).text, re.M)
        return float(m.group(1)) if m else 0.0

    def xreads() -> int:
        stats = redis_server.client().info("commandstats")
        return int(stats.get("cmdstat_xread", {}).get("calls", 0))

    with contextlib.ExitStack() as opened:
        clients = [opened.enter_context(stack.ws(headers=AUTH)) for _ in range(n_clients)]
        for ws in clients:
            assert recv_json(ws)["type"] == "snapshot"
        reads, calls = counter("vigil_gateway_transitions_read_total"), xreads()
        ids = stack.flap("a", n_events)
        for ws in clients:
            assert ids_of(ws, n_events) == ids
        assert counter("vigil_gateway_transitions_read_total") - reads == n_events
        assert xreads() - calls < n_clients, "a reader per client?"


# --- who may connect ----------------------------------------------------------------------

def refused(stack: Stack, **kw: Any) -> tuple[int, str]:
    """The status of a refused upgrade, and the field its JSON error names."""
    with pytest.raises(InvalidStatus) as exc:
        stack.ws(**kw).close()
    response = exc.value.response
    return response.status_code, json.loads(response.body)["error"]["field"]


def test_websocket_token_missing_wrong_and_right(stack):
    assert refused(stack) == (401, "token")
    assert refused(stack, token="wrong") == (401, "token")
    assert refused(stack, headers={"Authorization": "Bearer wrong"}) == (401, "token")
    for kw in ({"token": TOKEN}, {"headers": AUTH}):
        with stack.ws(**kw) as ws:
            assert recv_json(ws)["type"] == "snapshot"


def test_origin_is_checked(stack):
    same = {"Origin": f"http://127.0.0.1:{stack.port}", **AUTH}
    with stack.ws(headers=same) as ws:  # same origin: the dashboard itself
        assert recv_json(ws)["type"] == "snapshot"
    assert refused(stack, headers={"Origin": "https://evil.example", **AUTH}) == (403, "origin")
    # A wrong token from a foreign page: the Origin is what it hears about first.
    assert refused(stack, headers={"Origin": "https://evil.example"}) == (403, "origin")
    _, port = stack.gateway("gateway-o", VIGIL_ALLOWED_ORIGINS="https://dash.example")
    with stack.ws(port=port, headers={"Origin": "https://dash.example", **AUTH}) as ws:
        assert recv_json(ws)["type"] == "snapshot"
    assert refused(stack, port=port, headers={
        "Origin": "https://evil.example", **AUTH}) == (403, "origin")
    with stack.ws(port=port, headers={  # the gateway's own dashboard stays allowed
            "Origin": f"http://127.0.0.1:{port}", **AUTH}) as ws:
        assert recv_json(ws)["type"] == "snapshot"


@pytest.mark.parametrize("size", [5_000, 100_000])
def test_oversized_frames_close_with_1009_and_others_carry_on(stack, size):
    with stack.ws(headers=AUTH) as ws, stack.ws(headers=AUTH) as bystander:
        assert recv_json(ws)["type"] == recv_json(bystander)["type"] == "snapshot"
        ws.send(json.dumps({"type": "ping", "pad": "x" * size}))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
        more = stack.flap("a", 1)
        assert ids_of(bystander, 1) == more


def test_binary_and_malformed_frames_get_errors_and_the_session_goes_on(stack):
    with stack.ws(headers=AUTH) as ws:
        assert recv_json(ws)["type"] == "snapshot"
        for bad, field in ((b"\x00\x01", "frame"), ("[1, 2]", "frame"), ('{"type": 7}', "frame"),
                           ("\ud800".encode("utf-8", "surrogatepass"), "frame")):
            ws.send(bad)
            msg = recv_json(ws)
            assert (msg["type"], msg["field"]) == ("error", field), (bad, msg)
        more = stack.flap("a", 1)
        assert ids_of(ws, 1) == more


def test_the_snapshot_comes_first_even_to_a_client_that_speaks_first(stack, redis_server):
    """Replies wait for the snapshot: here its read is held up by a frozen Redis."""
    redis_server.freeze()
    try:
        with stack.ws(headers=AUTH) as ws:  # the upgrade needs no Redis
            ws.send('{"type": "ping"}')
            ws.send("{bad")
            assert_quiet(ws)  # no pong ahead of the snapshot
            redis_server.thaw()
            kinds = [recv_json(ws)["type"] for _ in range(3)]
            assert kinds == ["snapshot", "pong", "error"], kinds
    finally:
        redis_server.thaw()
    ids = stack.flap("a", 1)
    with stack.ws(since=ids[0], headers=AUTH) as ws:  # resumed: nothing to wait for
        ws.send('{"type": "ping"}')
        assert recv_json(ws)["type"] == "pong"


@pytest.mark.parametrize("size", [10, 1_000, 70_000])  # each frame-length encoding
def test_transitions_of_any_size_reach_clients_intact(stack, size):
    with stack.ws(headers=AUTH) as ws:
        assert recv_json(ws)["type"] == "snapshot"
        entry = stack.redis.xadd(f"{stack.prefix}:transitions", {"data": json.dumps({
            "instance": "a", "name": "Alpha", "from": "running", "to": "error",
            "at": "2026-12-03T16:00:00.123Z", "reason": "refused", "message": "m" * size,
            "summary": {"total": 1, "running": 0, "error": 1, "unknown": 0}})}).decode()
        msg = recv_json(ws)
        assert (msg["id"], msg["message"]) == (entry, "m" * size)


def test_a_peer_that_stops_answering_pings_is_dropped_and_others_stay(stack):
    _, port = stack.gateway("gateway-p", VIGIL_WS_PING="0.5")
    with stack.ws(port=port, headers=AUTH) as alive:  # answers pings (the library does)
        assert recv_json(alive)["type"] == "snapshot"
        mute = never_reading_client(port, TOKEN)  # reads below, but never answers a ping
        mute.settimeout(10)
        t0 = time.monotonic()
        received = b""
        try:
            while chunk := mute.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
        finally:
            mute.close()
        dropped_after = time.monotonic() - t0
        assert b"\x89" in received  # it was pinged...
        assert dropped_after < 5, f"dropped only after {dropped_after:.1f}s"  # ...then dropped
        more = stack.flap("a", 1)  # the answering client, there all along, is still served
        assert ids_of(alive, 1) == more


def test_clients_joining_and_resuming_under_load_get_each_transition_once_in_order(stack):
    """Clients connect, read a while and leave, half of them resuming with ``since``, while
    transitions flow at ~150/s, 16 at a time: each must get exactly the stream's ids
    after its start."""
    stop = threading.Event()
    sessions: list[tuple[str, list[str]]] = []  # (start id: since or snapshot cursor, ids)
    errors: list[BaseException] = []
    lock = threading.Lock()

    def inject() -> None:
        tick = int(time.time() * 1000)
        ok = True
        while not stop.is_set():
            for _ in range(3):
                tick += 1
                ok = not ok
                stack.inject("a", ok=ok, tick=tick)
            time.sleep(0.02)

    def churn(seed: int) -> None:
        rng = random.Random(seed)
        resume_from: str | None = None
        try:
            for _ in range(8):
                since = resume_from if rng.random() < 0.5 else None
                ids: list[str] = []
                with stack.ws(since=since, headers=AUTH) as ws:
                    start = since
                    deadline = time.monotonic() + rng.uniform(0.05, 0.6)
                    while (left := deadline - time.monotonic()) > 0:
                        try:
                            msg = json.loads(ws.recv(timeout=left))
                        except TimeoutError:
                            break
                        if msg["type"] == "snapshot":
                            assert start is None and not ids, msg["type"]
                            start = msg["cursor"]
                        else:
                            assert msg["type"] == "transition", msg
                            ids.append(msg["id"])
                assert start is not None
                with lock:
                    sessions.append((start, ids))
                resume_from = ids[-1] if ids else start
        except BaseException as exc:
            errors.append(exc)

    injector = threading.Thread(target=inject, daemon=True)
    injector.start()
    workers = [threading.Thread(target=churn, args=(seed,), daemon=True) for seed in range(16)]
    try:
        for w in workers:
            w.start()
        for w in workers:
            w.join(60)
    finally:
        stop.set()
        injector.join(10)
    assert not errors, errors
    stream = [t["id"] for t in stack.transitions()]
    assert len(stream) > 200, "the load did not happen"
    checked = 0
    for start, ids in sessions:
        if not ids:
            continue
        want = [i for i in stream if key(start) < key(i) <= key(ids[-1])]
        assert ids == want, f"from {start}: got {len(ids)}, want {len(want)}"
        checked += len(ids)
    assert checked > 100 and len(sessions) == 16 * 8


def key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def test_a_client_resuming_after_an_inventory_change_gets_a_fresh_snapshot(stack):
    ids = stack.flap("a", 2)
    version = stack.redis.get(f"{stack.prefix}:inventory:version")
    write_inventory(stack.inventory, [
        {"id": "a", "name": "Alpha", "host": "10.0.0.1", "rise": 1, "fall": 1},
        {"id": "z", "name": "Zed", "host": "10.0.0.9"},
    ])
    wait_for(lambda: stack.redis.get(f"{stack.prefix}:inventory:version") != version, 20,
             message="the new inventory loaded")
    more = stack.flap("a", 1)
    with stack.ws(since=ids[-1], headers=AUTH) as ws:
        assert ids_of(ws, 1) == more  # what it missed, then the instances as they are now
        snap = recv_json(ws)
        assert snap["type"] == "snapshot" and key(snap["cursor"]) >= key(more[0])
        assert {i["id"] for i in snap["instances"]} == {"a", "z"}
        assert_quiet(ws)
    with stack.ws(since=more[0], headers=AUTH) as ws:  # from after the change: no snapshot
        assert_quiet(ws)


def test_a_client_resumed_past_a_change_the_gateway_notices_late_gets_no_snapshot(stack):
    """The gateway's reader notices inventory changes every few seconds; a client that
    resumed from after the change before that already shows the new inventory."""
    gateway = stack.services["gateway"]
    notices = "inventory changed: sending a fresh snapshot"

    def changed(version: bytes | None) -> bool:
        return bool(stack.redis.get(f"{stack.prefix}:inventory:version") != version)

    def noticed(before: int) -> bool:
        return bool(gateway.log().count(notices) > before)

    with stack.ws(headers=AUTH) as watcher:
        assert recv_json(watcher)["type"] == "snapshot"
        for attempt in range(5):  # until the notice comes after the client resumed
            seen = gateway.log().count(notices)
            version = stack.redis.get(f"{stack.prefix}:inventory:version")
            write_inventory(stack.inventory, [
                {"id": "a", "name": "Alpha", "host": "10.0.0.1", "rise": 1, "fall": 1},
                {"id": f"z{attempt}", "host": "10.0.0.9"},
            ])
            wait_for(functools.partial(changed, version), 20, message="new inventory")
            after = stack.flap("a", 1)
            with stack.ws(since=after[0], headers=AUTH) as ws:
                late = gateway.log().count(notices) == seen
                wait_for(functools.partial(noticed, seen), 10,
                         message="the gateway noticed the change")
                # One who had the old inventory: the transition and a snapshot, in the
                # order the reader saw them (it may notice the change before the flap).
                frames = {f["type"]: f for f in (recv_json(watcher), recv_json(watcher))}
                assert set(frames) == {"transition", "snapshot"}, frames
                assert frames["transition"]["id"] == after[0]
                assert f"z{attempt}" in {i["id"] for i in frames["snapshot"]["instances"]}
                assert_quiet(ws)
            if late:
                break
        assert late, "the gateway noticed every change before a client could resume"


def test_clients_that_vanish_mid_handshake_leave_no_session_behind(stack):
    """Half-close and reset right after the upgrade, while the session is in its first
    Redis calls: every session must end, so the drain on SIGTERM has nothing to wait for."""
    for _ in range(200):
        sock = never_reading_client(stack.port, TOKEN)
        sock.shutdown(socket.SHUT_WR)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # linger 0: a reset
    metrics = f"http://127.0.0.1:{stack.port}/metrics"
    wait_for(lambda: re.search(r"^vigil_ws_clients 0\.0$", httpx.get(metrics).text, re.M),
             10, message="no client left")
    gateway = stack.services["gateway"]
    assert gateway.stop() == 0
    assert "graceful shutdown exceeded" not in gateway.log(), gateway.log_tail()


def test_a_ping_flood_from_a_peer_that_never_reads_is_bounded_and_cut_off(stack):
    gateway, port = stack.gateway("gateway-f", VIGIL_WS_PING="0.5")
    flood = never_reading_client(port, TOKEN)
    ping = bytes((0x89, 0x80 | 125)) + b"\0\0\0\0" + b"p" * 125  # masked with a zero key
    burst = ping * 1000
    rss_before = rss_kib(gateway.pid)
    rss_peak = rss_before
    sent = 0
    flood.settimeout(10)
    try:
        with pytest.raises(OSError):  # reset by the gateway (or a send that cannot go on)
            while sent < 400 * 2**20:
                flood.sendall(burst)
                sent += len(burst)
                rss_peak = max(rss_peak, rss_kib(gateway.pid))
    finally:
        flood.close()
    growth_mib = (rss_peak - rss_before) / 1024
    print(f"ping flood: {sent / 2**20:.0f} MiB of pings sent before the cut; gateway grew "
          f"{growth_mib:.1f} MiB")
    assert sent < 400 * 2**20, "never cut off"
    assert growth_mib < 20, f"gateway grew {growth_mib:.0f} MiB under a ping flood"
    with stack.ws(port=port, headers=AUTH) as ws:  # and it still serves
        assert recv_json(ws)["type"] == "snapshot"


def test_connections_that_never_send_a_whole_request_are_closed(stack):
    """Idle, half-sent and trickling request heads are closed after the head deadline
    (10 s), so they cannot hold file descriptors; an upgraded WebSocket is not."""
    def opened(first: bytes) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", stack.port))
        sock.sendall(first)
        sock.setblocking(False)
        return sock

    with stack.ws(headers=AUTH) as ws:
        assert recv_json(ws)["type"] == "snapshot"
        idle = opened(b"")
        half = opened(b"GET /api/summary HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        trickle = opened(b"G")
        t0 = time.monotonic()
        open_socks = {"idle": idle, "half": half, "trickle": trickle}
        closed_after: dict[str, float] = {}
        try:
            def all_closed() -> bool:
                for name, sock in open_socks.items():
                    if name in closed_after:
                        continue
                    try:
                        if sock.recv(4096) == b"":
                            closed_after[name] = time.monotonic() - t0
                    except BlockingIOError:
                        if name == "trickle":
                            with contextlib.suppress(OSError):
                                sock.send(b"E")  # a byte now and then, never a whole head
                    except ConnectionResetError:
                        closed_after[name] = time.monotonic() - t0
                return len(closed_after) == len(open_socks)

            wait_for(all_closed, 20, interval=0.5, message="head deadline")
        finally:
            for sock in open_socks.values():
                sock.close()
        assert all(8 < t < 15 for t in closed_after.values()), closed_after
        more = stack.flap("a", 1)  # the WebSocket, older than the deadline, still works
        assert ids_of(ws, 1) == more
    resp = httpx.get(f"http://127.0.0.1:{stack.port}/api/summary", headers=AUTH)
    assert resp.status_code == 200


def test_without_a_token_only_loopback_host_names_are_served(stack):
    """DNS rebinding: a page whose name was re-pointed at 127.0.0.1 sends its own Host."""
    _, port = stack.gateway("gateway-nt", VIGIL_API_TOKEN="")
    url = f"http://127.0.0.1:{port}/api/summary"
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}"):
        assert httpx.get(url, headers={"Host": host}).status_code == 200, host
    resp = httpx.get(url, headers={"Host": f"evil.example:{port}"})
    assert resp.status_code == 421 and resp.json()["error"]["field"] == "host"
    assert raw_upgrade(port, f"evil.example:{port}", f"http://evil.example:{port}") == 421
    assert raw_upgrade(port, f"localhost:{port}", f"http://localhost:{port}") == 101
    # With a token, names are not restricted (behind an ingress): the token protects.
    assert stack.http.get("/api/summary", headers={"Host": "vigil.example"}).status_code == 200


def raw_upgrade(port: int, host: str, origin: str) -> int:
    """The status of a WebSocket upgrade sent with these Host and Origin headers."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(f"GET /ws HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\n"
                     "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                     f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        return int(sock.recv(64).split(b" ")[1])


def test_an_origin_must_be_http_or_https_to_be_same_origin(stack):
    for origin in (f"evil://127.0.0.1:{stack.port}", f"127.0.0.1:{stack.port}", "null"):
        assert refused(stack, headers={"Origin": origin, **AUTH}) == (403, "origin"), origin
    with stack.ws(headers={"Origin": f"https://127.0.0.1:{stack.port}", **AUTH}) as ws:
        assert recv_json(ws)["type"] == "snapshot"  # TLS ended by a proxy in front


@pytest.mark.parametrize("method, path, status, field", [
    ("POST", "/api/summary", 405, "method"),
    ("DELETE", "/api/instances/a", 405, "method"),
    ("GET", "/ws", 426, "upgrade"),
])
def test_wrong_methods_and_plain_http_to_ws_get_json_errors(stack, method, path, status, field):
    resp = stack.http.request(method, path)
    assert resp.status_code == status and resp.json()["error"]["field"] == field


def test_history_from_an_id_this_redis_never_had_says_gap_as_the_websocket_says_reset(stack):
    """A poller whose ``since`` came from another Redis (or one that lost its data) must
    learn that it missed what it cannot get back, as a WebSocket client gets ``reset``."""
    ids = stack.flap("a", 3)
    origin = stack.redis.get(f"{stack.prefix}:transitions:origin").decode()
    before = f"{int(origin.split('-')[0]) - 1000}-0"  # older than this Redis' history
    last = ids[-1].split("-")[0]
    for since in (before, f"{int(last) + 1000}-0", f"{2**64 - 1}-{2**64 - 1}"):
        page = stack.get("/api/transitions", since=since)
        assert page["gap"] is True, since
        assert [t["id"] for t in page["transitions"]] == ids, since  # from the oldest kept
        with stack.ws(since=since, headers=AUTH) as ws:
            assert recv_json(ws)["type"] == "reset"
            assert recv_json(ws)["type"] == "snapshot"
    for since in ("0-0", "0", origin, ids[0]):  # the beginning, and points of this history
        page = stack.get("/api/transitions", since=since)
        assert page["gap"] is False, since
        assert [t["id"] for t in page["transitions"]] == ids[ids.index(since) + 1:] \
            if since in ids else ids, since
