"""A TCP proxy in a background thread whose behaviour tests switch at run time.

Modes:
  * ``"pass"``      forward bytes both ways (after ``delay`` seconds per chunk, if set);
  * ``"blackhole"`` accept connections and keep them open, but forward nothing and answer
                    nothing.  Connections that were already established stall too: the
                    bytes they send are held (not dropped) until the mode is "pass" again.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, Literal

Mode = Literal["pass", "blackhole"]
_MODES = ("pass", "blackhole")


class TcpProxy:
    def __init__(
        self,
        target_host: str,
        target_port: int,
        mode: Mode = "pass",
        delay: float = 0.0,
        port: int = 0,
    ) -> None:
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, not {mode!r}")
        self.target_host = target_host
        self.target_port = target_port
        self.host = "127.0.0.1"
        #: listening port (0 until start() when not given)
        self.port = port
        #: seconds to wait before forwarding each chunk, read per chunk (may be changed live)
        self.delay = delay
        self._mode: Mode = mode
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._passing: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        #: number of client connections accepted so far
        self.accepted = 0

    def __repr__(self) -> str:
        return (
            f"<TcpProxy {self.host}:{self.port} -> {self.target_host}:{self.target_port}"
            f" {self._mode}>"
        )

    # -- public -------------------------------------------------------------------------
    @property
    def mode(self) -> Mode:
        return self._mode

    @mode.setter
    def mode(self, mode: Mode) -> None:
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, not {mode!r}")
        self._mode = mode
        if self._loop is not None:
            # Applied synchronously: a connection made after this returns sees the mode.
            self._call(self._apply_mode())

    @property
    def connections(self) -> int:
        """Client connections currently open."""
        return len(self._tasks)

    def start(self) -> None:
        if self._loop is not None:
            raise RuntimeError(f"{self!r} already started")
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=loop.run_forever, name=f"tcp-proxy->{self.target_port}", daemon=True
        )
        self._thread.start()
        try:
            self._call(self._open())
        except BaseException:
            self.stop()
            raise

    def close_connections(self) -> None:
        """Abort every open client connection (and its upstream); keep listening."""
        if self._loop is not None:
            self._call(self._drop_all())

    def stop(self) -> None:
        """Close the listener and every connection; stop the thread.  Idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None:
            return
        try:
            if loop.is_running():
                self._call(self._close())
        finally:
            loop.call_soon_threadsafe(loop.stop)
            if thread is not None:
                thread.join(10)
            loop.close()
            self._loop = None
            self._thread = None

    def __enter__(self) -> TcpProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- loop side ----------------------------------------------------------------------
    def _call(self, coro: Coroutine[Any, Any, None], timeout: float = 10.0) -> None:
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _open(self) -> None:
        self._passing = asyncio.Event()
        await self._apply_mode()
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _apply_mode(self) -> None:
        assert self._passing is not None
        if self._mode == "pass":
            self._passing.set()
        else:
            self._passing.clear()

    async def _drop_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Let the transports' connection_lost callbacks run, so their sockets are closed
        # before the loop stops (an unclosed transport is a ResourceWarning).
        for _ in range(3):
            await asyncio.sleep(0)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._drop_all()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._passing is not None
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.accepted += 1
        upstream: asyncio.StreamWriter | None = None
        try:
            # Blackholed: hold the connection open, connect upstream only if "pass" returns.
            await self._passing.wait()
            try:
                up_reader, upstream = await asyncio.open_connection(
                    self.target_host, self.target_port
                )
            except OSError:
                return
            self._writers.add(upstream)
            await asyncio.gather(
                self._pump(reader, upstream, writer), self._pump(up_reader, writer, upstream)
            )
        except asyncio.CancelledError:
            # Only _drop_all() cancels these tasks.  Ending normally keeps asyncio's
            # start_server callback from logging the cancellation as an error.
            pass
        finally:
            self._tasks.discard(task)
            for w in (writer, upstream):
                if w is not None:
                    self._writers.discard(w)
                    w.transport.abort()

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        source: asyncio.StreamWriter,
    ) -> None:
        """Copy reader -> writer; ``source`` is the writer of the reader's own connection."""
        assert self._passing is not None
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                await self._passing.wait()
                if self.delay > 0:
                    await asyncio.sleep(self.delay)
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof() and not writer.is_closing():
                writer.write_eof()
        except OSError:
            # One side reset: tear down both directions, which ends the other pump too.
            writer.transport.abort()
            source.transport.abort()
