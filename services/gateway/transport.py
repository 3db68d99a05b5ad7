"""uvicorn's sans-I/O WebSocket protocol, with two additions: a fast path for fan-out, and a
peer that reads nothing is cut off.

Fan-out: the hub encodes each event once, as a complete WebSocket frame (server frames are
not masked, and compression is off, so the same bytes suit every client), and writes it
straight to the transport of every client that is caught up and whose buffer has room.
That costs one ``transport.write`` per client instead of a task switch, an ASGI message
and a frame build per client. ``scope["extensions"]["vigil.write_frame"]`` offers it; a
client that is not caught up, or whose buffer is full, goes through its queue and the
ordinary ASGI ``send``, which waits for the buffer to drain.

Cut off: uvicorn applies backpressure (``send`` waits while the transport's buffer is above its
high-water mark), so a client that stops reading fills its queue in the hub and is kicked.
But the close frame that follows waits behind the very buffer the peer is slow to read,
and asyncio's graceful ``transport.close()`` waits for that buffer to drain: for a peer
that never reads, the connection, its buffers and its file descriptor would stay until it
goes away, which a hostile or wedged peer never does. Here, closing a connection whose
writes are paused puts the close frame behind the buffer (a peer that is slow but reads
gets its backlog, then the close code) and aborts the connection if the peer has not
answered it within ``CLOSE_LINGER`` (a reset: it was not reading).
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

FRAGMENT = 16 * 1024  # payload bytes per frame of a long message (a snapshot)
CLOSE_LINGER = 5.0  # seconds a peer with a full buffer has to read up to our close frame


def frame_header(n: int, opcode: int = 0x1, fin: bool = True) -> bytes:
    """The header of an unmasked, uncompressed frame of ``n`` payload bytes (RFC 6455 5.2)."""
    first = (0x80 if fin else 0) | opcode
    if n < 126:
        return bytes((first, n))
    if n < 1 << 16:
        return struct.pack("!BBH", first, 126, n)
    return struct.pack("!BBQ", first, 127, n)


def text_frame(payload: bytes) -> bytes:
    """One final, unmasked, uncompressed text frame."""
    return frame_header(len(payload)) + payload


class WebSocketProtocol(WebSocketsSansIOProtocol):
    _stall: asyncio.TimerHandle | None = None

    # --- a peer that stopped reading --------------------------------------------------------
    def pause_writing(self) -> None:
        """Our buffer to this peer is full. If it stays full for a keepalive round (ping
        interval + timeout), the peer is gone or hostile: cut it off. Whatever path wrote
        last (events, pongs, the keepalive's own close), memory stays bounded."""
        super().pause_writing()
        if self._stall is None:
            limit = (self.ping_interval or 20.0) + (self.ping_timeout or 20.0)
            self._stall = self.loop.call_later(limit, self._stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    def _stalled(self) -> None:
        self._stall = None
        if not self.writable.is_set():
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        super().connection_lost(exc)

    def handle_ping(self) -> None:
        """uvicorn writes every pong at once, whatever the buffer holds: a peer flooding
        pings without reading would grow it without bound. Answer only while it reads."""
        if self.writable.is_set():
            super().handle_ping()
        else:
            self.conn.data_to_send()  # the queued pong, dropped

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if (scope is not None and getattr(self, "writable", None) is not None
                and not self.conn.extensions):  # frames are sent as they are: no deflate
            scope["extensions"]["vigil.write_frame"] = self.write_frame
            scope["extensions"]["vigil.send_long"] = self.send_long

    def write_frame(self, frame: bytes) -> bool:
        """Write a complete frame now; False (nothing written) when the connection is not
        open or its buffer is above the high-water mark."""
        if (self.close_sent or self.disconnected or not self.handshake_complete
                or not self.writable.is_set() or self.transport.is_closing()):
            return False
        self.transport.write(frame)
        return True

    async def send_long(self, payload: bytes) -> None:
        """Send one text message in ``FRAGMENT``-sized frames, each written only once the
        buffer has drained below its low-water mark. The payload is shared by every client
        (a snapshot, encoded once): a client's buffer holds at most a high-water mark and a
        fragment of it, however large it is and however many clients get it at once. A
        peer that reads slowly but steadily keeps resetting the stall timer.

        The caller must send no other data frame on this connection meanwhile (control
        frames may come between fragments: RFC 6455 5.4)."""
        view = memoryview(payload)
        n = len(payload)
        for start in range(0, n or 1, FRAGMENT):
            await self.writable.wait()
            if self.close_sent or self.disconnected or self.transport.is_closing():
                raise ClientDisconnected()
            chunk = view[start:start + FRAGMENT]
            self.transport.write(frame_header(len(chunk), 0x1 if start == 0 else 0x0,
                                              fin=start + FRAGMENT >= n))
            self.transport.write(chunk)

    async def send(self, message: Any) -> None:
        if message["type"] == "websocket.send" and self.transport.is_closing():
            # The connection failed under us (a reset): say so at once, instead of writing
            # into a dead transport, which asyncio logs on every further write.
            raise ClientDisconnected()
        writable = getattr(self, "writable", None)
        if (message["type"] == "websocket.close" and self.handshake_complete
                and not self.close_sent and writable is not None and not writable.is_set()
                and not self.transport.is_closing()):
            # The close frame goes behind what the buffer holds (a few bytes more), for a
            # peer that is slow but reading: it gets its backlog, then the code (1013).
            # One that does not read it within CLOSE_LINGER is cut off (a reset).
            code, reason = message.get("code", 1000), message.get("reason", "") or ""
            self.close_sent = True
            self.queue.put_nowait({"type": "websocket.disconnect", "code": code,
                                   "reason": reason})
            self.conn.send_close(code, reason)
            self.transport.write(b"".join(self.conn.data_to_send()))
            if self.close_timer is not None:
                self.close_timer.cancel()
            self.close_timer = self.loop.call_later(CLOSE_LINGER, self.transport.abort)
            return
        await super().send(message)


class HttpProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's head (nginx's
    ``client_header_timeout``): a connection that has not started a request within
    ``HEAD_TIMEOUT`` of opening, or of its previous response, is closed. uvicorn has none,
    so connections that send nothing, or a byte now and then, held their file descriptors
    for ever: about 20,000 of them took the gateway down for everyone, token or not."""

    HEAD_TIMEOUT = 10.0
    _head_timer: asyncio.TimerHandle | None = None
    _head_cycle: object = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._arm_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_cycle = self.cycle
        self._head_timer = self.loop.call_later(self.HEAD_TIMEOUT, self._head_timeout)

    def _head_timeout(self) -> None:
        self._head_timer = None
        if (self.cycle is self._head_cycle  # no new request since the timer was set
                and self.transport.get_protocol() is self  # not upgraded to a WebSocket
                and not self.transport.is_closing()):
            self.transport.close()

