"""Private servers and Vigil services for a benchmark run (the test-support layer, no pytest)."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import redis

from tests.support.procs import Service
from tests.support.servers import MariaDB, RedisServer, make_mariadb_template
from tests.support.vigil import write_inventory
from tests.support.wait import free_port, wait_for


class Bench:
    """One workdir with a Redis, MariaDB servers on demand, and services; closed at the end."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="vigil-bench-"))
        self._stack = contextlib.ExitStack()
        self.redis = RedisServer(self.dir / "redis")
        self.redis.start()
        self._stack.callback(self.redis.stop)
        self._template: Path | None = None
        self._n = 0

    def close(self) -> None:
        self._stack.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Bench:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def mariadb(self) -> MariaDB:
        if self._template is None:
            self._template = make_mariadb_template(self.dir / "template" / "data")
        self._n += 1
        db = MariaDB(self.dir / f"mariadb{self._n}", self._template)
        db.start()
        self._stack.callback(db.stop)
        return db

    def env(self, prefix: str, inventory: Path, db: MariaDB | None,
            **extra: str) -> dict[str, str]:
        return {
            "VIGIL_REDIS_URL": self.redis.url, "VIGIL_PREFIX": prefix,
            "VIGIL_INVENTORY": str(inventory),
            "VIGIL_MYSQL_USER": db.user if db else "vigil",
            "VIGIL_MYSQL_PASSWORD": db.password if db else "",
            "VIGIL_GATEWAY_PORT": str(free_port()), "VIGIL_LOG_LEVEL": "WARNING",
            "VIGIL_PROBER_ID": "bench-prober", "VIGIL_CONSUMER": "bench-state",
            "VIGIL_GRACE": "5", **extra,
        }

    def inventory(self, name: str, instances: Sequence[Mapping[str, Any]],
                  defaults: Mapping[str, Any]) -> Path:
        return write_inventory(self.dir / f"{name}.toml", instances, defaults)

    def service(self, name: str, env: Mapping[str, str]) -> Service:
        svc = Service(f"services.{name}", env, self.dir / "logs", name=f"{name}-{free_port()}")
        svc.start()
        self._stack.callback(svc.stop)
        return svc

    def client(self) -> Any:
        return redis.Redis.from_url(self.redis.url)

    def wait_ready(self, port: int, prefix: str | None = None) -> None:
        """The gateway answers /readyz, and (given ``prefix``) the inventory is in Redis.

        A gateway is ready before the state service has loaded the inventory; a client
        connecting in between gets an empty snapshot.
        """
        import httpx

        def ready() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, 20, message="gateway ready")
        if prefix is not None:
            wait_for(lambda: self.client().exists(f"{prefix}:inventory:version"), 20,
                     message="inventory loaded")


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """User + system CPU of a process (and its threads), or of one thread, from /proc."""
    stat = Path(f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat")
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def machine() -> str:
    mariadb = subprocess.run(["mariadbd", "--version"], capture_output=True, text=True).stdout
    redis_v = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    mariadb_v = mariadb.split(" Ver ")[-1].split(" for ")[0]
    pymysql_v = importlib.metadata.version("PyMySQL")
    return (f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"PyMySQL {pymysql_v}, MariaDB {mariadb_v}, Redis {redis_v.split(' ')[2][2:]}")


@contextlib.contextmanager
def timer() -> Iterator[list[float]]:
    out: list[float] = []
    start = time.perf_counter()
    yield out
    out.append(time.perf_counter() - start)
