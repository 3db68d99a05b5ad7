"""uvicorn's sans-I/O WebSocket protocol, with one change: a peer that reads nothing is cut off.

uvicorn applies backpressure (``send`` waits while the transport's buffer is above its
high-water mark), so a client that stops reading fills its queue in the hub and is kicked.
But the close frame that follows would wait behind the very buffer the peer does not
read, and asyncio's graceful ``transport.close()`` waits for that buffer to drain: the
connection, its buffers and its file descriptor would stay until the peer goes away, which
a hostile or wedged peer never does. Here, closing a connection whose writes are paused
aborts it instead (the peer sees a reset; it was not reading the close frame anyway).
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol


class WebSocketProtocol(WebSocketsSansIOProtocol):
    async def send(self, message: Any) -> None:
        writable = getattr(self, "writable", None)
        if (message["type"] == "websocket.close" and self.handshake_complete
                and not self.close_sent and writable is not None and not writable.is_set()):
            self.close_sent = True
            self.queue.put_nowait({"type": "websocket.disconnect",
                                   "code": message.get("code", 1000)})
            self.transport.abort()
            return
        await super().send(message)
