"""Shared fixtures: real Redis / MariaDB servers and service processes, always cleaned up.

Every server and service started through these fixtures is stopped at teardown, whatever
the test's outcome; ``tests.support.procs`` also kills any survivor when pytest exits.
"""

from __future__ import annotations

import shutil
import sys
import uuid
from collections.abc import Callable, Generator, Iterator, Mapping
from pathlib import Path

import pytest

# `tests.support` must be importable however pytest is launched (`pytest` or
# `python -m pytest`, from any directory).
_REPO_ROOT = str(Path(__file__).resolve().parent.parent)
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from tests.support.procs import Service, terminate_all  # noqa: E402
from tests.support.proxy import TcpProxy  # noqa: E402
from tests.support.servers import MariaDB, RedisServer, make_mariadb_template  # noqa: E402

_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


def _test_failed(request: pytest.FixtureRequest) -> bool:
    reports = request.node.stash.get(_REPORTS, {})
    return any(r.failed for r in reports.values())


@pytest.fixture
def prefix() -> str:
    """A unique key prefix for this test, e.g. ``t1a2b3c4d``."""
    return f"t{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def mariadb_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bootstrapped MariaDB datadir, made once per session and copied by each server."""
    return make_mariadb_template(tmp_path_factory.mktemp("mariadb-template") / "datadir")


class _Services:
    """This test's service processes, stopped together (their drains overlap) and before
    the test's Redis goes away: a drain without Redis waits out its retries."""

    def __init__(self) -> None:
        self.services: list[Service] = []
        self.codes: dict[str, int] = {}

    def stop_all(self) -> None:
        started = [s for s in self.services if s.started and s.name not in self.codes]
        codes = terminate_all([s.proc for s in started], 20, group=True)
        self.codes.update(zip((s.name for s in started), codes, strict=True))


@pytest.fixture
def _services() -> _Services:
    return _Services()


@pytest.fixture
def redis_server(tmp_path: Path, _services: _Services) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    try:
        server.start()
        yield server
    finally:
        _services.stop_all()
        server.stop()


MariaDBFactory = Callable[..., MariaDB]


@pytest.fixture
def mariadb_factory(
    request: pytest.FixtureRequest, tmp_path: Path, mariadb_template: Path
) -> Iterator[MariaDBFactory]:
    """Call it to get another started MariaDB; all are stopped at teardown."""
    servers: list[MariaDB] = []

    def make(extra_args: tuple[str, ...] = ()) -> MariaDB:
        server = MariaDB(tmp_path / f"mariadb-{len(servers)}", mariadb_template,
                         extra_args=extra_args)
        servers.append(server)
        server.start()
        return server

    try:
        yield make
    finally:
        for server in servers:
            server.stop()
        if not _test_failed(request):
            # Datadirs are ~30 MB each and pytest keeps three sessions of tmp dirs.
            for server in servers:
                shutil.rmtree(server.datadir, ignore_errors=True)


@pytest.fixture
def mariadb(mariadb_factory: MariaDBFactory) -> MariaDB:
    return mariadb_factory()


ServiceFactory = Callable[..., Service]


@pytest.fixture
def service_factory(request: pytest.FixtureRequest, tmp_path: Path,
                    _services: _Services) -> Iterator[ServiceFactory]:
    """``service_factory(module, env, name=None)`` starts ``python -m module``.

    All services are stopped at teardown (before ``redis_server``'s Redis); if the test
    failed, the tail of each service's log is printed (under "Captured stdout teardown").
    """
    services = _services.services
    logdir = tmp_path / "logs"

    def make(module: str, env: Mapping[str, str], name: str | None = None) -> Service:
        base = name or module.rsplit(".", 1)[-1]
        taken = {s.name for s in services}
        unique, n = base, 1
        while unique in taken:
            n += 1
            unique = f"{base}-{n}"
        service = Service(module, env, logdir, name=unique)
        services.append(service)
        service.start()
        return service

    try:
        yield make
    finally:
        _services.stop_all()
        codes = _services.codes
        if _test_failed(request):
            for service in services:
                print(
                    f"\n----- {service.name} ({service.module}) exit={codes.get(service.name)}"
                    f" log tail: {service.log_path} -----"
                )
                print(service.log_tail(80))


@pytest.fixture
def proxy_factory() -> Iterator[Callable[[str, int], TcpProxy]]:
    """``proxy_factory(host, port)`` starts a TcpProxy in front of a server; stopped at teardown."""
    proxies: list[TcpProxy] = []

    def make(host: str, port: int) -> TcpProxy:
        proxy = TcpProxy(host, port)
        proxies.append(proxy)
        proxy.start()
        return proxy

    try:
        yield make
    finally:
        for proxy in proxies:
            proxy.stop()
