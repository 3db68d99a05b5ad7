"""Smoke tests of the test-support layer itself: real servers, real signals, real sockets."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pymysql
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.support.procs import REPO_ROOT, Service
from tests.support.proxy import TcpProxy
from tests.support.servers import MariaDB, RedisServer
from tests.support.wait import free_port, port_is_open, wait_for

ER_ACCESS_DENIED = 1045
CR_CONN_HOST_ERROR = 2003


def vigil_login(
    host: str, port: int, password: str = MariaDB.password, timeout: float = 1.0
) -> pymysql.connections.Connection[Any]:
    """Log in over TCP as the monitoring user, with short timeouts."""
    return pymysql.connect(
        host=host,
        port=port,
        user=MariaDB.user,
        password=password,
        connect_timeout=timeout,
        read_timeout=timeout,
        write_timeout=timeout,
    )


def can_login(host: str, port: int) -> bool:
    with contextlib.closing(vigil_login(host, port)) as conn, conn.cursor() as cur:
        cur.execute("SELECT CURRENT_USER()")
        row = cur.fetchone()
    return bool(row == (f"{MariaDB.user}@%",))


def login_error(host: str, port: int, **kwargs: Any) -> tuple[pymysql.err.OperationalError, float]:
    """Attempt a login that must fail; return the error and how long it took."""
    began = time.monotonic()
    with pytest.raises(pymysql.err.OperationalError) as info:
        vigil_login(host, port, **kwargs).close()
    return info.value, time.monotonic() - began


# -- wait_for ---------------------------------------------------------------------------


def test_wait_for_returns_the_truthy_value() -> None:
    calls = iter([0, None, "", "done"])
    assert wait_for(lambda: next(calls), timeout=2, interval=0.01) == "done"


def test_wait_for_timeout_names_the_last_error() -> None:
    def broken() -> bool:
        raise ConnectionRefusedError("nope")

    began = time.monotonic()
    with pytest.raises(AssertionError, match=r"timed out after 0.2s waiting for thing.*nope"):
        wait_for(broken, timeout=0.2, message="thing")
    assert time.monotonic() - began < 1


def test_free_port_is_bindable_and_not_the_system_servers() -> None:
    port = free_port()
    assert port not in (3306, 6379)
    assert not port_is_open("127.0.0.1", port)


# -- Redis ------------------------------------------------------------------------------


def test_redis_answers_on_its_own_port(redis_server: RedisServer) -> None:
    assert redis_server.port != 6379
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    client = redis_server.client()
    assert client.ping()
    client.set("k", "v")
    assert client.get("k") == "v"  # decode_responses=True


def test_redis_restart_keeps_port_and_loses_data(redis_server: RedisServer) -> None:
    client = redis_server.client()
    client.set("k", "v")
    old_pid, port = redis_server.pid, redis_server.port
    redis_server.restart()
    assert redis_server.port == port
    assert redis_server.pid != old_pid
    # The same client object reconnects; the data is gone (no persistence).
    assert wait_for(client.ping, timeout=5, message="ping after restart")
    assert client.get("k") is None


def test_redis_freeze_times_out_and_thaw_restores(redis_server: RedisServer) -> None:
    client = redis_server.client(socket_timeout=0.5, retry=Retry(NoBackoff(), 0))
    assert client.ping()
    redis_server.freeze()
    began = time.monotonic()
    with pytest.raises(redis.exceptions.TimeoutError):
        client.ping()
    assert time.monotonic() - began < 3
    assert port_is_open("127.0.0.1", redis_server.port)  # the kernel still accepts
    redis_server.thaw()
    assert wait_for(client.ping, timeout=5, message="ping after thaw")


def test_redis_stop_is_idempotent_and_closes_the_port(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "r")
    server.start()
    try:
        assert port_is_open("127.0.0.1", server.port)
        server.freeze()  # stop() must cope with a frozen server
    finally:
        server.stop()
    server.stop()
    assert not server.running
    assert not port_is_open("127.0.0.1", server.port)


def test_redis_kill_then_restart(redis_server: RedisServer) -> None:
    redis_server.kill()
    assert not redis_server.running
    assert not port_is_open("127.0.0.1", redis_server.port)
    redis_server.restart()
    assert redis_server.client().ping()


# -- MariaDB ----------------------------------------------------------------------------


def test_mariadb_vigil_login_over_tcp(mariadb: MariaDB) -> None:
    assert mariadb.port != 3306
    assert can_login(mariadb.host, mariadb.port)
    error, _ = login_error(mariadb.host, mariadb.port, password="wrong")
    assert error.args[0] == ER_ACCESS_DENIED


def test_mariadb_vigil_user_has_usage_only(mariadb: MariaDB) -> None:
    grants = mariadb.query(f"SHOW GRANTS FOR '{mariadb.user}'@'%'")
    assert len(grants) == 1
    assert grants[0][0].startswith(f"GRANT USAGE ON *.* TO `{mariadb.user}`@`%`")


def test_mariadb_status_var(mariadb: MariaDB) -> None:
    assert mariadb.status_var("Uptime") >= 0
    before = mariadb.status_var("Connections")
    assert can_login(mariadb.host, mariadb.port)
    assert mariadb.status_var("Connections") > before
    with pytest.raises(KeyError):
        mariadb.status_var("No_such_variable")


def test_mariadb_stop_refuses_and_restart_brings_it_back(mariadb: MariaDB) -> None:
    port, datadir = mariadb.port, mariadb.datadir
    mariadb.stop()
    mariadb.stop()  # idempotent
    assert not mariadb.running
    error, elapsed = login_error(mariadb.host, port)
    assert error.args[0] == CR_CONN_HOST_ERROR
    assert elapsed < 1  # refused, not timed out

    mariadb.restart()
    assert (mariadb.port, mariadb.datadir) == (port, datadir)
    assert can_login(mariadb.host, mariadb.port)  # the user survived: same datadir


def test_mariadb_kill_then_restart_recovers(mariadb: MariaDB) -> None:
    mariadb.query("CREATE DATABASE probe_me")
    mariadb.kill()
    assert not mariadb.running
    assert not port_is_open(mariadb.host, mariadb.port)
    mariadb.restart()
    assert can_login(mariadb.host, mariadb.port)
    assert ("probe_me",) in mariadb.query("SHOW DATABASES")


def test_mariadb_freeze_makes_login_time_out(mariadb: MariaDB) -> None:
    mariadb.freeze()
    error, elapsed = login_error(mariadb.host, mariadb.port)
    assert "timed out" in str(error)
    assert 0.9 < elapsed < 5
    mariadb.thaw()
    assert wait_for(lambda: can_login(mariadb.host, mariadb.port), timeout=10, message="login")


def test_mariadb_factory_gives_independent_servers(mariadb_factory: Callable[[], MariaDB]) -> None:
    a, b = mariadb_factory(), mariadb_factory()
    assert a.port != b.port
    assert a.datadir != b.datadir
    b.stop()
    assert can_login(a.host, a.port)
    assert not port_is_open(b.host, b.port)


# -- TcpProxy ---------------------------------------------------------------------------


def test_proxy_pass_and_blackhole(mariadb: MariaDB) -> None:
    with TcpProxy(mariadb.host, mariadb.port) as proxy:
        assert proxy.port not in (0, mariadb.port)
        assert can_login(proxy.host, proxy.port)

        proxy.mode = "blackhole"
        error, elapsed = login_error(proxy.host, proxy.port)
        assert "timed out" in str(error)
        assert elapsed < 5
        assert port_is_open(proxy.host, proxy.port)  # still accepting

        proxy.mode = "pass"
        assert can_login(proxy.host, proxy.port)
    assert not port_is_open("127.0.0.1", proxy.port)


def test_proxy_blackhole_stalls_an_established_connection(mariadb: MariaDB) -> None:
    with TcpProxy(mariadb.host, mariadb.port) as proxy:
        conn = vigil_login(proxy.host, proxy.port)
        try:
            proxy.mode = "blackhole"
            with pytest.raises(pymysql.err.OperationalError), conn.cursor() as cur:
                cur.execute("SELECT 1")
        finally:
            conn.close()
        proxy.mode = "pass"
        assert can_login(proxy.host, proxy.port)


def test_proxy_delay_slows_every_exchange(mariadb: MariaDB) -> None:
    with TcpProxy(mariadb.host, mariadb.port, delay=0.1) as proxy:
        began = time.monotonic()
        assert can_login(proxy.host, proxy.port)
        assert time.monotonic() - began >= 0.3  # handshake + auth + query: several hops
        proxy.delay = 0
        began = time.monotonic()
        assert can_login(proxy.host, proxy.port)
        assert time.monotonic() - began < 0.4


def redis_ping(sock: socket.socket) -> bytes:
    sock.sendall(b"PING\r\n")
    return sock.recv(64)


def test_proxy_close_connections(redis_server: RedisServer) -> None:
    with TcpProxy(redis_server.host, redis_server.port) as proxy:
        with socket.create_connection((proxy.host, proxy.port), timeout=2) as sock:
            assert redis_ping(sock) == b"+PONG\r\n"
            assert proxy.connections == 1
            proxy.close_connections()
            assert proxy.connections == 0
            with contextlib.suppress(ConnectionError):
                assert redis_ping(sock) == b""  # EOF (or a reset)
        with socket.create_connection((proxy.host, proxy.port), timeout=2) as sock:
            assert redis_ping(sock) == b"+PONG\r\n"  # new connections still go through
        assert proxy.accepted == 2


# -- Service ----------------------------------------------------------------------------


def test_service_runs_with_a_clean_env_and_stops(
    service_factory: Callable[..., Service], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VIGIL_SHOULD_NOT_LEAK", "1")
    service = service_factory("tests.support.dummy_service", {"VIGIL_DUMMY_GREETING": "hi"})
    assert service.alive
    wait_for(lambda: "ready hi leaked=[]" in service.log(), timeout=10, message="ready line")
    assert service.log_path.name == "dummy_service.log"
    assert service.stop() == 3  # its SIGTERM handler's exit code
    assert service.returncode == 3
    assert service.stop() == 3  # idempotent
    assert "got SIGTERM" in service.log()


def test_service_stop_falls_back_to_sigkill(service_factory: Callable[..., Service]) -> None:
    service = service_factory("tests.support.dummy_service", {"VIGIL_DUMMY_IGNORE_TERM": "1"})
    wait_for(lambda: "ready" in service.log(), timeout=10, message="ready line")
    began = time.monotonic()
    assert service.stop(timeout=0.5) == -9
    assert time.monotonic() - began < 5


def test_service_kill_and_wait(service_factory: Callable[..., Service]) -> None:
    a = service_factory("tests.support.dummy_service", {})
    b = service_factory("tests.support.dummy_service", {})
    assert a.name != b.name
    wait_for(lambda: "ready" in b.log(), timeout=10, message="ready line")
    assert b.kill() == -9
    with pytest.raises(subprocess.TimeoutExpired):
        a.wait(timeout=0.2)


# -- atexit safety net ------------------------------------------------------------------


def test_leftover_servers_are_killed_when_python_exits(tmp_path: Path) -> None:
    script = (
        "import sys; from pathlib import Path\n"
        "from tests.support.servers import RedisServer\n"
        "s = RedisServer(Path(sys.argv[1])); s.start(); s.freeze()\n"
        "print(s.port, s.pid, flush=True)\n"  # exits without stop()
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "r")],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    port, pid = map(int, done.stdout.split())
    assert "killing leftover child" in done.stderr
    assert not port_is_open("127.0.0.1", port)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
