"""The MySQL password never leaves the prober's memory: not in Redis, logs, REST, frames, argv."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from tests.support.vigil import Stack, recv_json
from tests.support.wait import free_port, wait_for


def dump_redis(r: Any) -> bytes:
    """Every byte Redis holds under any key: strings, hashes, streams, sets, functions."""
    out = []
    for key in r.scan_iter(count=1000):
        kind = r.type(key).decode()
        out.append(key)
        if kind == "string":
            out.append(r.get(key))
        elif kind == "hash":
            for k, v in r.hgetall(key).items():
                out += [k, v]
        elif kind == "stream":
            for _, fields in r.xrange(key):
                for k, v in fields.items():
                    out += [k, v]
        elif kind == "set":
            out += list(r.smembers(key))
        elif kind == "zset":
            out += [m for m, _ in r.zrange(key, 0, -1, withscores=True)]
        elif kind == "list":
            out += r.lrange(key, 0, -1)
    out.append(repr(r.function_list(withcode=True)).encode())
    return b"\n".join(x for x in out if x)


def test_password_never_appears_anywhere(service_factory, redis_server, mariadb, tmp_path: Path,
                                         prefix):
    password = mariadb.password
    creds = tmp_path / "credentials.toml"
    creds.write_text(f'[wrong]\nuser = "{mariadb.user}"\npassword = "{password}-nope"\n')
    stack = Stack(service_factory, redis_server.url, tmp_path, prefix, [
        {"id": "good", "host": mariadb.host, "port": mariadb.port},
        {"id": "badpw", "host": mariadb.host, "port": mariadb.port, "credentials": "wrong"},
        {"id": "down", "host": "127.0.0.1", "port": free_port()},
    ], defaults={"interval": 0.5, "timeout": 0.4, "fall": 1},
        user=mariadb.user, password=password,
        extra_env={"VIGIL_CREDENTIALS": str(creds), "VIGIL_LOG_LEVEL": "DEBUG"})
    try:
        stack.start()
        with stack.ws() as ws:
            frames = [str(ws.recv(timeout=10))]
            stack.wait_status("good", "running", 15)
            stack.wait_status("badpw", "error", 15, reason="auth")
            stack.wait_status("down", "error", 15, reason="refused")
            with contextlib.suppress(TimeoutError):
                while True:
                    frames.append(str(ws.recv(timeout=1)))
        with stack.ws(since="0-0") as ws:  # a replay of every transition so far
            frames.append(str(ws.recv(timeout=10)))
            assert recv_json(ws)["type"] in ("snapshot", "transition")
        rest = [stack.http.get(p).text for p in (
            "/api/instances", "/api/instances/badpw", "/api/summary", "/api/transitions",
            "/metrics")]
        assert "Access denied" in stack.status("badpw")["message"]
        argv = [Path(f"/proc/{s.pid}/cmdline").read_bytes() for s in stack.services.values()]
        wait_for(lambda: stack.redis.xlen(f"{prefix}:probes") > 10, 10, message="probes")
        stack.stop()
        haystacks = {
            "redis": dump_redis(stack.redis),
            "logs": stack.logs().encode(),
            "rest": "\n".join(rest).encode(),
            "frames": "\n".join(frames).encode(),
            "argv": b"\n".join(argv),
        }
        for where, text in haystacks.items():
            assert text, f"nothing captured from {where}: the check would prove nothing"
            assert password.encode() not in text, f"password leaked into {where}"
    finally:
        stack.close()
