"""Detection latency: a real stop/start of MariaDB to the transition frame at a WebSocket client."""

from __future__ import annotations

import json
import random
import time
from typing import Any

from websockets.sync.client import connect

from tests.bench.env import Bench
from tests.support.wait import free_port


def _wait_frame(ws: Any, to: str, timeout: float) -> tuple[float, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        msg = json.loads(ws.recv(timeout=max(0.01, deadline - time.monotonic())))
        if msg.get("type") == "transition" and msg["to"] == to:
            return time.monotonic(), msg


def run(bench: Bench, cycles: int = 5, interval: float = 1.0, timeout: float = 0.5,
        rise: int = 1, fall: int = 2) -> dict[str, Any]:
    """Kill -9 MariaDB (stop) and start it again, ``cycles`` times; seconds to each frame."""
    db = bench.mariadb()
    prefix = f"det{free_port()}"
    inv = bench.inventory(prefix, [{"id": "db", "host": db.host, "port": db.port}],
                          {"interval": interval, "timeout": timeout, "rise": rise, "fall": fall})
    env = bench.env(prefix, inv, db)
    for name in ("state", "prober", "gateway"):
        bench.service(name, env)
    port = int(env["VIGIL_GATEWAY_PORT"])
    bench.wait_ready(port, prefix)
    stops, starts = [], []
    rng = random.Random(7)
    with connect(f"ws://127.0.0.1:{port}/ws", max_size=2**24) as ws:
        snap = json.loads(ws.recv(timeout=10))
        if snap["instances"][0]["status"] != "running":
            _wait_frame(ws, "running", 30)
        for _ in range(cycles):
            # Desynchronise from the probe phase, as a real outage would be.
            time.sleep(interval * rng.uniform(0.2, 1.2))
            t0 = time.monotonic()
            db.kill()
            t1, msg = _wait_frame(ws, "error", 30)
            stops.append(t1 - t0)
            assert msg["reason"] == "refused", msg
            time.sleep(interval * rng.uniform(0.2, 1.2))
            db.start()  # returns once the server accepts logins
            t2 = time.monotonic()
            t3, _ = _wait_frame(ws, "running", 30)
            starts.append(t3 - t2)
    return {"interval": interval, "timeout": timeout, "rise": rise, "fall": fall,
            "stop_to_error": stops, "start_to_running": starts}
