"""Redis behind Sentinel: the services find the primary through ``redis+sentinel://``,
follow a failover, and a status change after it reaches an open WebSocket client once.

Real processes: a primary, a replica and a Sentinel (each redis-server, passwords in their
config files), a MariaDB, and the three services.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

import pytest
import redis
import redis.sentinel
from websockets.sync.client import ClientConnection

from shared.errors import ConfigError
from shared.settings import from_env, parse_sentinel_url
from tests.support.servers import MariaDB, RedisServer, SentinelServer
from tests.support.vigil import Stack, recv_json
from tests.support.wait import wait_for

SERVICE = "vigil-test"
FAST = {"interval": 0.5, "timeout": 0.4, "rise": 1, "fall": 1}


def stream_id(text: str) -> tuple[int, int]:
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def next_transition(ws: ClientConnection, instance: str, timeout: float) -> dict[str, Any]:
    """The next transition frame for ``instance``; any reset fails the test at once."""
    deadline = time.monotonic() + timeout
    while True:
        frame = recv_json(ws, timeout=max(0.0, deadline - time.monotonic()))
        assert frame["type"] != "reset", frame
        if frame["type"] == "transition" and frame["instance"] == instance:
            return frame


@pytest.mark.parametrize(("url", "sentinels", "service", "db", "user", "password"), [
    ("redis+sentinel://s1:26379/mymaster", [("s1", 26379)], "mymaster", 0, None, ""),
    ("redis+sentinel://:p%40ss@s1:1,s2:2,[::1]:3/m/4",
     [("s1", 1), ("s2", 2), ("::1", 3)], "m", 4, None, "p@ss"),
    ("redis+sentinel://u:pw@s1/m", [("s1", 26379)], "m", 0, "u", "pw"),
])
def test_sentinel_urls_are_read(url, sentinels, service, db, user, password):
    target = parse_sentinel_url(url)
    assert (list(target.sentinels), target.service, target.db, target.username,
            target.password.reveal()) == (sentinels, service, db, user, password)
    assert from_env({"VIGIL_REDIS_URL": url}).redis_url == url
    if password:
        assert password not in repr(target)


@pytest.mark.parametrize(("url", "problem"), [
    ("redis+sentinel://:hunter22@s1:26379", "no service name"),
    ("redis+sentinel://:hunter22@s1:26379/m/x", "/<service name>[/<db number>]"),
    ("redis+sentinel://:hunter22@s1:0/m", "port must be 1-65535"),
    ("redis+sentinel://:hunter22@s1:99999/m", "port must be 1-65535"),
    ("redis+sentinel://:hunter22@s1:26379,/m", "has no host"),
    ("redis+sentinel://:hunter22@s1/m?ssl=true", "no query parameters"),
    ("sentinel://:hunter22@s1/m", "must start with redis://"),
])
def test_bad_sentinel_urls_name_the_problem_without_the_password(url, problem):
    with pytest.raises(ConfigError) as err:
        from_env({"VIGIL_REDIS_URL": url})
    assert "VIGIL_REDIS_URL" in str(err.value) and problem in str(err.value)
    assert "hunter22" not in str(err.value)


def test_a_sentinel_failover_is_followed_and_the_next_change_is_pushed_once(
        service_factory, mariadb: MariaDB, tmp_path, prefix):
    password, sentinel_password = (f"{w}-{secrets.token_hex(8)}" for w in ("data", "sentinel"))
    primary = RedisServer(tmp_path / "primary", password=password,
                          config=[f"masterauth {password}", "repl-diskless-sync-delay 0"])
    replica = RedisServer(tmp_path / "replica", password=password, config=[
        f"masterauth {password}", f"replicaof {primary.host} {primary.port}"])
    sentinel = SentinelServer(tmp_path / "sentinel", primary, SERVICE, down_after=1000,
                              password=sentinel_password)
    servers = (primary, replica, sentinel)
    client: Any = None
    stack = None
    try:
        for server in servers:
            server.start()
        wait_for(lambda: replica.client().info("replication")["master_link_status"] == "up",
                 20, message="replica in sync")
        wait_for(lambda: sentinel.client().execute_command("SENTINEL", "replicas", SERVICE),
                 20, message="the Sentinel knows the replica")
        client = redis.sentinel.Sentinel(
            [(sentinel.host, sentinel.port)], sentinel_kwargs={"password": sentinel_password},
            password=password, socket_timeout=5).master_for(SERVICE)
        stack = Stack(service_factory, f"redis+sentinel://:{password}@127.0.0.1:{sentinel.port}"
                      f"/{SERVICE}/0", tmp_path, prefix,
                      [{"id": "db", "host": mariadb.host, "port": mariadb.port}], defaults=FAST,
                      user=mariadb.user, password=mariadb.password,
                      extra_env={"VIGIL_REDIS_SENTINEL_PASSWORD": sentinel_password},
                      client=client)
        stack.start()
        stack.wait_status("db", "running", 15)
        assert primary.client().exists(f"{prefix}:transitions")  # the data is on the primary

        with stack.ws() as ws:
            snap = recv_json(ws)
            assert snap["type"] == "snapshot"
            assert [i["status"] for i in snap["instances"]] == ["running"]
            seen = [snap["cursor"]]

            # Redis replicates asynchronously (a replica fresh from its full sync gets
            # nothing until its first ack): everything written so far on the replica
            # first, or the failover would be a Redis that lost its data (tested in chaos/).
            assert primary.client().execute_command("WAIT", 1, 10_000) == 1
            primary.kill()
            wait_for(lambda: sentinel.primary() == (replica.host, replica.port), 30,
                     message="the Sentinel promoted the replica")
            mariadb.stop()
            down = next_transition(ws, "db", 30)
            assert (down["from"], down["to"]) == ("running", "error")
            mariadb.start()
            up = next_transition(ws, "db", 30)
            assert (up["from"], up["to"]) == ("error", "running")
            seen += [down["id"], up["id"]]

        # Both changes are on the new primary, in the order the client got them, once.
        after = [t for t in stack.transitions("db") if stream_id(t["id"]) > stream_id(seen[0])]
        assert [(t["from"], t["to"]) for t in after] == [("running", "error"),
                                                         ("error", "running")]
        assert [t["id"] for t in after] == seen[1:]
        assert replica.client().info("replication")["role"] == "master"
        assert stack.ready()
        for name, svc in stack.services.items():
            assert svc.alive, f"{name} exited:\n{svc.log_tail()}"
        logs = stack.logs()
        assert password not in logs and sentinel_password not in logs
        assert json.dumps(password)[1:-1] not in logs
    finally:
        if stack is not None:
            stack.stop()
            stack.close()
        if client is not None:
            client.close()
        for server in servers:
            server.stop()
