"""A whole Vigil stack for a test: an inventory file, env, the three services, and readers.

Services are started as a user would (``python -m services.<name>``) through the
``service_factory`` fixture, so they are stopped even when the test fails.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import redis
from websockets.sync.client import ClientConnection, connect

from tests.support.procs import Service
from tests.support.wait import free_port, wait_for

ServiceFactory = Callable[..., Service]


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    return repr(v)


def write_inventory(path: Path, instances: Sequence[Mapping[str, Any]],
                    defaults: Mapping[str, Any] | None = None) -> Path:
    lines = []
    if defaults:
        lines.append("[defaults]")
        lines += [f"{k} = {toml_value(v)}" for k, v in defaults.items()]
    for inst in instances:
        lines.append("\n[[instance]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in inst.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class Stack:
    def __init__(self, service_factory: ServiceFactory, redis_url: str, workdir: Path,
                 prefix: str, instances: Sequence[Mapping[str, Any]],
                 defaults: Mapping[str, Any] | None = None, user: str = "vigil",
                 password: str = "", extra_env: Mapping[str, str] | None = None,
                 client: redis.Redis | None = None):
        self._factory = service_factory
        self.inventory = write_inventory(workdir / "inventory.toml", instances, defaults)
        self.prefix = prefix
        self.port = free_port()
        self.env = {
            "VIGIL_REDIS_URL": redis_url,
            "VIGIL_PREFIX": prefix,
            "VIGIL_INVENTORY": str(self.inventory),
            "VIGIL_MYSQL_USER": user,
            "VIGIL_MYSQL_PASSWORD": password,
            "VIGIL_GATEWAY_PORT": str(self.port),
            "VIGIL_PROBER_ID": "prober-1",
            "VIGIL_CONSUMER": "state-1",
            "VIGIL_GRACE": "5",
            "VIGIL_LOG_LEVEL": "DEBUG",
            **(extra_env or {}),
        }
        self.services: dict[str, Service] = {}
        # The test's own reader (untyped: replies are bytes); ``client`` when the URL is
        # one redis-py's from_url does not read (redis+sentinel://).
        self.redis: Any = client or redis.Redis.from_url(redis_url)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=5)

    def close(self) -> None:
        self.http.close()
        self.redis.close()

    # --- processes ----------------------------------------------------------------------
    def start(self, *names: str) -> None:
        for name in names or ("state", "prober", "gateway"):
            svc = self.services.get(name)
            if svc is None:
                self.services[name] = self._factory(f"services.{name}", self.env, name=name)
            else:
                svc.start()
        if "gateway" in (names or ("gateway",)):
            wait_for(self.ready, 20, message="gateway /readyz")
        if "state" in (names or ("state",)):
            # A gateway is ready before the inventory is loaded; a test that connects in
            # between would see an empty snapshot.
            wait_for(lambda: self.redis.exists(f"{self.prefix}:inventory:version"), 20,
                     message="inventory loaded")

    def stop(self, *names: str) -> dict[str, int]:
        return {n: self.services[n].stop() for n in names or tuple(self.services)}

    def ready(self) -> bool:
        try:
            return self.http.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def logs(self) -> str:
        return "\n".join(s.log() for s in self.services.values())

    # --- reading ------------------------------------------------------------------------
    def get(self, path: str, **params: Any) -> Any:
        resp = self.http.get(path, params=params)
        resp.raise_for_status()
        return resp.json()

    def status(self, ident: str) -> dict[str, Any]:
        return dict(self.get(f"/api/instances/{ident}")["instance"])

    def status_in_redis(self, ident: str) -> dict[str, Any]:
        raw = self.redis.hget(f"{self.prefix}:status", ident)
        assert raw is not None, f"no status for {ident} in redis"
        return dict(json.loads(raw))

    def wait_status(self, ident: str, status: str, timeout: float,
                    reason: str | None = None) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            s = self.status(ident)
            ok = s["status"] == status and (reason is None or s["reason"] == reason)
            return s if ok else None

        return wait_for(check, timeout, message=f"{ident} {status} {reason or ''}")

    def transitions(self, instance: str | None = None) -> list[dict[str, Any]]:
        out = []
        for entry_id, fields in self.redis.xrange(f"{self.prefix}:transitions"):
            data = json.loads(fields[b"data"])
            if instance is None or data["instance"] == instance:
                out.append({"id": entry_id.decode(), **data})
        return out

    def probes(self, instance: str) -> list[dict[str, Any]]:
        out = []
        for _, fields in self.redis.xrange(f"{self.prefix}:probes"):
            data = json.loads(fields[b"data"])
            if data["instance"] == instance:
                out.append(data)
        return out

    def ws(self, since: str | None = None, *, port: int | None = None,
           headers: Mapping[str, str] | None = None, **params: str) -> ClientConnection:
        query = "&".join(f"{k}={v}" for k, v in {"since": since, **params}.items() if v)
        return connect(f"ws://127.0.0.1:{port or self.port}/ws" + (f"?{query}" if query else ""),
                       open_timeout=5, max_size=2**24, additional_headers=headers)

    def gateway(self, name: str, **env: str) -> tuple[Service, int]:
        """Start another gateway on its own port (same Redis and prefix); wait until ready."""
        port = free_port()
        svc = self._factory("services.gateway",
                            {**self.env, "VIGIL_GATEWAY_PORT": str(port), **env}, name=name)

        def ready() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, 20, message=f"{name} /readyz")
        return svc, port

    # --- writing what a prober would ------------------------------------------------------
    def inject(self, instance: str, ok: bool, tick: int, at: int | None = None) -> None:
        """XADD one probe result as a prober would (``at`` defaults to ``tick + 3``)."""
        self.redis.xadd(f"{self.prefix}:probes", {"data": json.dumps({
            "instance": instance, "prober": "test", "tick": tick,
            "at": tick + 3 if at is None else at, "ok": ok, "latency_ms": 2.0,
            "reason": None if ok else "refused", "message": None if ok else "connection refused",
        })})

    def flap(self, instance: str, n: int) -> list[str]:
        """Inject ``n`` results that each flip ``instance`` (which must have rise = fall = 1);
        wait for the ``n`` transitions in the stream and return their ids."""
        before = len(self.transitions())
        raw = self.redis.hget(f"{self.prefix}:status", instance)
        status = json.loads(raw)["status"] if raw else "unknown"
        tick = int(time.time() * 1000)
        for i in range(n):
            self.inject(instance, ok=(i % 2 == 0) == (status != "running"), tick=tick + i)

        def all_there() -> list[str] | None:
            ids = [t["id"] for t in self.transitions()]
            return ids if len(ids) == before + n else None

        ids = wait_for(all_there, 10, message=f"{n} transitions")
        return list(ids[before:])


def recv_json(ws: ClientConnection, timeout: float = 10) -> dict[str, Any]:
    return dict(json.loads(ws.recv(timeout=timeout)))
