"""What a WebSocket client sees: every transition, once, in order, with no gap at connect."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from typing import Any

from tests.support.vigil import Stack, recv_json
from tests.support.wait import wait_for

FAST = {"interval": 0.5, "timeout": 0.4, "rise": 1, "fall": 2}


def test_client_connected_throughout_sees_each_transition_once(service_factory, redis_server,
                                                               mariadb, tmp_path, prefix):
    stack = Stack(service_factory, redis_server.url, tmp_path, prefix,
                  [{"id": "db", "host": mariadb.host, "port": mariadb.port}],
                  defaults=FAST, user=mariadb.user, password=mariadb.password)
    try:
        stack.start("state", "gateway")  # no prober yet: the instance is `unknown`
        with stack.ws() as ws:
            snap = recv_json(ws)
            assert snap["type"] == "snapshot"
            assert [i["status"] for i in snap["instances"]] == ["unknown"]
            stack.start("prober")
            got = [recv_json(ws)]
            mariadb.stop()
            got.append(recv_json(ws))
            mariadb.start()
            got.append(recv_json(ws))
            assert [(m["type"], m["from"], m["to"]) for m in got] == [
                ("transition", "unknown", "running"),
                ("transition", "running", "error"),
                ("transition", "error", "running"),
            ]
            assert got[1]["reason"] == "refused"
            assert got[2]["summary"] == {"total": 1, "running": 1, "error": 0, "unknown": 0}
            # Once each: the stream holds exactly these three, and nothing else arrives.
            assert [t["id"] for t in stack.transitions("db")] == [m["id"] for m in got]
            stack.stop("prober")
            try:
                extra = ws.recv(timeout=1.5)
            except TimeoutError:
                extra = None
            assert extra is None
    finally:
        stack.close()


def _inject(r: Any, prefix: str, instance: str, ok: bool, tick: int) -> None:
    now = int(time.time() * 1000)
    r.xadd(f"{prefix}:probes", {"data": json.dumps({
        "instance": instance, "prober": "test", "tick": tick, "at": now, "ok": ok,
        "latency_ms": 1.0, "reason": None if ok else "refused",
        "message": None if ok else "connection refused"})})


def test_transitions_while_clients_connect_are_neither_lost_nor_doubled(
        service_factory, redis_server, tmp_path, prefix):
    """Clients connect over and over while transitions flow; each must see a gapless chain."""
    stack = Stack(service_factory, redis_server.url, tmp_path, prefix,
                  [{"id": "flap", "host": "127.0.0.1", "port": 1, "rise": 1, "fall": 1}])
    try:
        stack.start("state", "gateway")  # results are injected: no prober
        stop = threading.Event()
        sessions: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
        errors: list[BaseException] = []

        def connect_loop() -> None:
            try:
                while not stop.is_set():
                    ws = exits.enter_context(stack.ws())
                    snap, frames = recv_json(ws), []
                    deadline = time.monotonic() + 0.3
                    while time.monotonic() < deadline:
                        with contextlib.suppress(TimeoutError):
                            frames.append(json.loads(ws.recv(timeout=0.05)))
                    sessions.append((snap, frames))
                    # Keep one in ten open to the end, to check the tail of the stream too.
                    if len(sessions) % 10:
                        ws.close()
                    else:
                        kept.append((snap, frames, ws))
            except BaseException as exc:
                errors.append(exc)

        kept: list[tuple[dict[str, Any], list[dict[str, Any]], Any]] = []
        exits = contextlib.ExitStack()
        threads = [threading.Thread(target=connect_loop) for _ in range(3)]
        for t in threads:
            t.start()
        tick = int(time.time() * 1000)
        for n in range(300):
            tick += 1
            _inject(stack.redis, prefix, "flap", ok=n % 2 == 0, tick=tick)
            time.sleep(0.005)
        stop.set()
        for t in threads:
            t.join(30)
        assert not errors, errors
        def folded() -> list[str] | None:
            ids = [t["id"] for t in stack.transitions()]
            return ids if len(ids) == 300 else None

        total = wait_for(folded, 15, message="300 transitions folded")
        # Drain the kept-open clients up to the last transition.
        for _snap, frames, ws in kept:
            while not frames or frames[-1]["id"] != total[-1]:
                frames.append(json.loads(ws.recv(timeout=10)))
        exits.close()
        assert len(sessions) >= 10, "too few connects to exercise the boundary"
        for snap, frames in sessions:
            assert snap["type"] == "snapshot"
            cursor = snap["cursor"]
            expected = [i for i in total if _sid(i) > _sid(cursor)][: len(frames)]
            assert [f["id"] for f in frames] == expected, "gap or duplicate at connect"
            state = snap["instances"][0]["status"]
            for f in frames:  # the chain continues from the snapshot's state
                assert f["from"] == state, (cursor, f)
                state = f["to"]
    finally:
        stack.close()


def _sid(value: str) -> tuple[int, int]:
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)
