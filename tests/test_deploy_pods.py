"""The three services started as their Kubernetes pods start them — the command, env,
mounted files, ports, probes and grace period all read from the rendered manifests, the
code installed as the image installs it — against a test Redis: liveness ignores Redis
and MySQL, readiness follows Redis, and a SIGTERM while busy ends in exit 0 within the
pod's grace period."""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.support.k8s import Pod, Resource, render
from tests.support.procs import REPO_ROOT, Service
from tests.support.proxy import TcpProxy
from tests.support.servers import RedisServer
from tests.support.vigil import recv_json, write_inventory
from tests.support.wait import free_port, wait_for

COMPONENTS = ("state", "prober", "gateway")
TOKEN = secrets.token_hex(16)


@pytest.fixture(scope="module")
def manifests() -> list[Resource]:
    return render("self-contained")


# The Dockerfile's build stage: COPY these, then a regular (not editable) install.
IMAGE_SOURCES = ("pyproject.toml", "README.md", "shared", "services")


@pytest.fixture(scope="module")
def image_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The project installed as the image installs it, outside the source tree, and the
    image's Python settings: the services must find their package data (the dashboard,
    the Redis Functions) there, with nothing imported from the checkout."""
    root = tmp_path_factory.mktemp("image")
    (root / "src").mkdir()
    for name in IMAGE_SOURCES:
        src = REPO_ROOT / name
        if src.is_dir():
            shutil.copytree(src, root / "src" / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(src, root / "src" / name)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--disable-pip-version-check", "--target", str(root / "site"),
                    str(root / "src")], check=True, timeout=300, capture_output=True)
    return {"PYTHONPATH": str(root / "site"), "PYTHONSAFEPATH": "1",
            "PYTHONDONTWRITEBYTECODE": "1"}


def make_pods(manifests: list[Resource], workdir: Path, redis_url: str,
              instances: list[dict[str, object]]) -> dict[str, Pod]:
    """The Deployments' pods, with the test's Secrets and inventory in their volumes."""
    inventory = write_inventory(workdir / "inventory.toml", instances,
                                {"interval": 1.0, "timeout": 0.9, "rise": 1, "fall": 2})
    secret_values = {
        ("vigil-redis", "url"): redis_url,
        ("vigil-api-token", "token"): TOKEN,
        ("vigil-credentials", "credentials.toml"):
            '[default]\nuser = "vigil"\npassword = "not-a-real-one"\n',
    }
    files = {("vigil-inventory", "instances.toml"): inventory.read_text()}
    return {c: Pod(manifests, "Deployment", f"vigil-{c}", workdir, secret_values, files)
            for c in COMPONENTS}


def start(pods: Mapping[str, Pod], service_factory: Callable[..., Service],
          prefix: str, image_env: Mapping[str, str]) -> dict[str, Service]:
    return {c: service_factory(pod.module, {**pod.env(), **image_env, "VIGIL_PREFIX": prefix},
                               name=c)
            for c, pod in pods.items()}


def status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return None


def answers(url: str, code: int) -> Callable[[], bool]:
    return lambda: status(url) == code


def gauge(url: str, name: str) -> float:
    """A metric without labels, read from a Prometheus text page."""
    text = httpx.get(url, timeout=5).text
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    assert m is not None, f"no {name} in {url}"
    return float(m.group(1))


def flood(redis: Any, stream: str, instances: list[Any], n: int) -> None:
    """``n`` probe results, as probers would publish them, for the state replica to fold."""
    tick = int(time.time() * 1000)
    pipe = redis.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(stream, {"data": json.dumps({
            "instance": instances[i % len(instances)], "prober": "flood", "tick": tick + i,
            "at": tick + i + 1, "ok": i % 3 == 0, "latency_ms": 1.0,
            "reason": None if i % 3 == 0 else "refused",
            "message": None if i % 3 == 0 else "connection refused"})})
    pipe.execute()


def refused(n: int) -> list[dict[str, object]]:
    port = free_port()  # nothing listens there: each probe is refused at once
    return [{"id": f"refused-{i}", "host": "127.0.0.1", "port": port} for i in range(n)]


def test_the_image_install_runs_the_services_without_the_source_tree(image_env):
    code = ("import shared, services.gateway.app as app, services.prober, services.state;"
            "from importlib import resources;"
            "print(shared.__file__, app.__file__, services.prober.__file__,"
            " resources.files('shared').joinpath('functions.lua'),"
            " resources.files('services.gateway').joinpath('static', 'index.html'))")
    out = subprocess.run([sys.executable, "-c", code], env={**image_env, "PATH": "/usr/bin"},
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=True)
    paths = [Path(p) for p in out.stdout.split()]
    site = Path(image_env["PYTHONPATH"])
    assert all(p.is_relative_to(site) for p in paths), paths
    assert all(p.is_file() for p in paths), paths


def test_liveness_ignores_redis_and_readiness_follows_it(
        manifests, service_factory, tmp_path, prefix, image_env):
    redis = RedisServer(tmp_path / "redis")  # its port is chosen; it starts later
    pods = make_pods(manifests, tmp_path, redis.url, refused(3))
    services = start(pods, service_factory, prefix, image_env)
    try:
        for c, pod in pods.items():
            wait_for(answers(pod.probe_url("livenessProbe"), 200), 20,
                     message=f"{c} alive without Redis")
            assert status(pod.probe_url("readinessProbe")) == 503, c
        redis.start()
        for c, pod in pods.items():
            wait_for(answers(pod.probe_url("readinessProbe"), 200), 30,
                     message=f"{c} ready once Redis is there")
            assert status(pod.probe_url("livenessProbe")) == 200, c
        # The dashboard is package data of the installed code.
        gateway = f"http://127.0.0.1:{pods['gateway'].port('http')}"
        for path in ("/", "/static/app.js", "/static/style.css"):
            assert status(gateway + path) == 200, path
        for c, svc in services.items():  # while Redis is there: no drain waits for it
            assert svc.stop() == 0, f"{c}:\n{svc.log_tail()}"
    finally:
        redis.stop()


@pytest.mark.parametrize("component", COMPONENTS)
def test_sigterm_while_busy_exits_0_within_the_grace_period(
        manifests, component, redis_server, proxy_factory, service_factory, tmp_path, prefix,
        image_env):
    # (Fixture order: the services are stopped first, while Redis still answers.)
    silent: TcpProxy = proxy_factory("127.0.0.1", free_port())
    silent.mode = "blackhole"  # accepts and never answers: probes run to their timeout
    instances = refused(20) + [{"id": f"silent-{i}", "host": silent.host, "port": silent.port}
                               for i in range(5)]
    pods = make_pods(manifests, tmp_path, redis_server.url, instances)
    services = start(pods, service_factory, prefix, image_env)
    gateway = f"127.0.0.1:{pods['gateway'].port('http')}"
    with httpx.Client(base_url=f"http://{gateway}", timeout=5,
                      headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        wait_for(lambda: http.get("/api/summary").json()["error"] == len(instances), 30,
                 message="every instance probed, folded and pushed")
    # Busy: silent probes in flight (90 % of each interval), results flowing to the
    # state replica, a WebSocket client on the gateway.
    with connect(f"ws://{gateway}/ws?token={TOKEN}", open_timeout=5) as ws:
        assert recv_json(ws)["type"] == "snapshot"
        assert status(pods["prober"].probe_url("livenessProbe")) == 200  # MySQL silent
        # What an autoscaler would watch: silent probes hold threads, not CPU.
        metrics = f"http://127.0.0.1:{pods['prober'].port('metrics')}/metrics"
        wait_for(lambda: gauge(metrics, "vigil_prober_workers_busy") >= 1, 10,
                 message="silent probes shown as busy workers")
        assert gauge(metrics, "vigil_prober_workers_max") == 256
        redis = redis_server.client()
        pod, victim = pods[component], services[component]
        if component == "state":  # a backlog to fold: batches in flight at SIGTERM
            flood(redis, f"{prefix}:probes", [i["id"] for i in instances], 100_000)
            [group] = redis.xinfo_groups(f"{prefix}:probes")
            assert group["lag"] + group["pending"] > 0, group  # still folding
        began = time.time()
        code = victim.stop(timeout=pod.grace)  # SIGTERM, then SIGKILL at the deadline
        took = time.time() - began
        assert code == 0, f"{component} exited {code}:\n{victim.log_tail()}"
        assert took < pod.grace, f"{component} took {took:.1f}s of {pod.grace}s"
        if component == "gateway":
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    ws.recv(timeout=5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        elif component == "prober":  # the probes in flight were finished and published
            # (well after SIGTERM: not results that were only waiting for their batch)
            after = redis.xrange(f"{prefix}:probes", min=str(int(began * 1000) + 100))
            assert any('"silent-' in fields["data"] for _, fields in after), after[-3:]
        else:  # every batch read was folded and acked: nothing left pending on the pod
            pending = redis.xpending_range(f"{prefix}:probes", "state", min="-", max="+",
                                           count=10, consumername=pod.name)
            assert pending == [], pending
