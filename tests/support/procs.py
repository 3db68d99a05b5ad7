"""Run the project's services as real child processes, and reap every child at exit.

Everything this package starts (services, redis-server, mariadbd) is registered in a
module-level registry; an ``atexit`` hook SIGKILLs whatever is still alive when the test
process exits, so a failing or interrupted test session cannot leave servers listening.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

# Variables copied from the test runner's environment into a service's environment;
# everything else (notably any VIGIL_* the developer has exported) is left out.
_INHERITED_ENV = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "PYTHONPATH",
    "VIRTUAL_ENV",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
)

# pid -> (process, kill the whole process group?)
_LIVE: dict[int, tuple[subprocess.Popen[bytes], bool]] = {}


def register(proc: subprocess.Popen[bytes], *, group: bool) -> None:
    """Track a child so the atexit hook kills it if nobody stopped it."""
    _LIVE[proc.pid] = (proc, group)


def unregister(proc: subprocess.Popen[bytes]) -> None:
    _LIVE.pop(proc.pid, None)


def signal_proc(proc: subprocess.Popen[bytes], sig: int, *, group: bool = False) -> None:
    """Send ``sig`` to a child (or its process group); a no-op once it has been reaped."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group:
            os.killpg(proc.pid, sig)
        else:
            os.kill(proc.pid, sig)


def terminate(proc: subprocess.Popen[bytes], timeout: float, *, group: bool = False) -> int:
    """SIGTERM (and SIGCONT, in case it is frozen), wait ``timeout`` s, then SIGKILL.

    Returns the exit code (negative signal number if killed by a signal).
    """
    if proc.poll() is None:
        signal_proc(proc, signal.SIGTERM)
        signal_proc(proc, signal.SIGCONT, group=group)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return kill(proc, group=group)
    return _reap(proc, group)


def terminate_all(procs: list[subprocess.Popen[bytes]], timeout: float, *,
                  group: bool = False) -> list[int]:
    """terminate() for several at once: every one gets its SIGTERM first, so that their
    drains overlap; then each is waited for (SIGKILL after ``timeout`` s from the start)."""
    for proc in procs:
        if proc.poll() is None:
            signal_proc(proc, signal.SIGTERM)
            signal_proc(proc, signal.SIGCONT, group=group)
    deadline = time.monotonic() + timeout
    codes = []
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            codes.append(kill(proc, group=group))
            continue
        codes.append(_reap(proc, group))
    return codes


def kill(proc: subprocess.Popen[bytes], *, group: bool = False) -> int:
    """SIGKILL and reap."""
    signal_proc(proc, signal.SIGKILL, group=group)
    proc.wait()
    return _reap(proc, group)


def _reap(proc: subprocess.Popen[bytes], group: bool) -> int:
    if group:
        # Grandchildren left behind in the child's session.
        _kill_group(proc.pid)
    unregister(proc)
    return proc.returncode


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


@atexit.register
def _reap_survivors() -> None:
    for proc, group in list(_LIVE.values()):
        if proc.poll() is None:
            print(
                f"tests.support: killing leftover child pid={proc.pid} {proc.args!r}",
                file=sys.stderr,
            )
        signal_proc(proc, signal.SIGKILL, group=group)
        if group:
            _kill_group(proc.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        unregister(proc)


def service_env(env: Mapping[str, str]) -> dict[str, str]:
    """A minimal copy of the runner's environment, overlaid with ``env``."""
    out = {k: os.environ[k] for k in _INHERITED_ENV if k in os.environ}
    pythonpath = [str(REPO_ROOT)]
    if out.get("PYTHONPATH"):
        pythonpath.append(out["PYTHONPATH"])
    out["PYTHONPATH"] = os.pathsep.join(pythonpath)
    out["PYTHONUNBUFFERED"] = "1"
    out.update(env)
    return out


class Service:
    """One ``python -m <module>`` child, its output in ``<logdir>/<name>.log``.

    Runs in its own session (process group), with the repository root as cwd.  ``start()``
    may be called again after the process has exited; the log is appended to.
    """

    def __init__(
        self,
        module: str,
        env: Mapping[str, str],
        logdir: Path,
        name: str | None = None,
    ) -> None:
        self.module = module
        self.env = dict(env)
        self.logdir = logdir
        self.name = name or module.rsplit(".", 1)[-1]
        self.log_path = logdir / f"{self.name}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        state = "alive" if self.alive else "not running"
        return f"<Service {self.name} ({self.module}) {state}>"

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            raise RuntimeError(f"service {self.name} was never started")
        return self._proc

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def started(self) -> bool:
        """start() was called at least once."""
        return self._proc is not None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def start(self) -> None:
        if self.alive:
            raise RuntimeError(f"service {self.name} is already running (pid {self.pid})")
        self.logdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            stamp = time.strftime("%H:%M:%S")
            log.write(f"===== {stamp} starting python -m {self.module} =====\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                [sys.executable, "-m", self.module],
                cwd=REPO_ROOT,
                env=service_env(self.env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        register(self._proc, group=True)

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL; return the exit code."""
        return terminate(self.proc, timeout, group=True)

    def kill(self) -> int:
        """SIGKILL the whole process group and reap it; return the exit code."""
        return kill(self.proc, group=True)

    def freeze(self) -> None:
        signal_proc(self.proc, signal.SIGSTOP, group=True)

    def thaw(self) -> None:
        signal_proc(self.proc, signal.SIGCONT, group=True)

    def signal(self, sig: int) -> None:
        signal_proc(self.proc, sig)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process to exit by itself (raises subprocess.TimeoutExpired)."""
        code = self.proc.wait(timeout)
        unregister(self.proc)
        _kill_group(self.proc.pid)
        return code

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])
