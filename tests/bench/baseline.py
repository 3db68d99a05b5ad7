"""The design Vigil replaces, for comparison only: one thread polling every instance in turn.

One background thread walks the instance list one after another — connect with pymysql's
defaults, ``SELECT 1``, close — then sleeps 5 s and starts over. pymysql's defaults mean
no ``ssl`` argument at all (so a "preferred" TLS context is built for every connection),
``connect_timeout=10`` and *no* read timeout: a server that accepts the TCP connection but
never answers (frozen, swapping, SIGSTOPped) holds the thread, and every instance behind
it, for as long as it stays silent. No rise/fall: the first failure is ``error``, the
first success ``running``.

Lives in the benchmark suite only; Vigil itself never runs this.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pymysql

#: on_change(instance_id, old status, new status, time.monotonic() when it was seen)
OnChange = Callable[[str, str, str, float], None]


@dataclass(frozen=True)
class Target:
    id: str
    host: str
    port: int
    user: str
    password: str


class BaselineMonitor:
    """``start()`` the polling thread; ``stop()`` asks it to end and never waits long.

    ``probing`` tells which instance the thread is inside right now and since when
    (``time.monotonic()``): a thread stuck on a frozen server shows it there.
    """

    def __init__(self, targets: Sequence[Target], on_change: OnChange,
                 interval: float = 5.0) -> None:
        self.targets = list(targets)
        self.interval = interval
        self.status: dict[str, str] = {t.id: "unknown" for t in self.targets}
        self.passes = 0
        self.pass_seconds: list[float] = []  # duration of each full pass, sleep excluded
        self.probing: tuple[str, float] | None = None
        self._on_change = on_change
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="baseline-monitor",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> bool:
        """Ask the thread to end; True if it did within ``timeout`` s.

        It may be blocked for ever on a frozen server (no read timeout): it is a daemon
        thread, so it never keeps the benchmark process alive, and it ends by itself at
        its next check of the flag once the server answers again.
        """
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _loop(self) -> None:
        # "every 5 s" as such loops are written: a full pass, then sleep 5 s.
        while not self._stop.is_set():
            began = time.monotonic()
            for t in self.targets:
                if self._stop.is_set():
                    return
                self.probing = (t.id, time.monotonic())
                new = "running" if self._check(t) else "error"
                self.probing = None
                old = self.status[t.id]
                if new != old:
                    self.status[t.id] = new
                    self._on_change(t.id, old, new, time.monotonic())
            self.pass_seconds.append(time.monotonic() - began)
            self.passes += 1
            self._stop.wait(self.interval)

    @staticmethod
    def _check(t: Target) -> bool:
        conn = None
        try:
            # pymysql's defaults: no ssl arguments, connect_timeout=10, read_timeout=None.
            conn = pymysql.connect(host=t.host, port=t.port, user=t.user,
                                   password=t.password)
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
                cur.fetchone()
            return True
        except Exception:
            return False
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
