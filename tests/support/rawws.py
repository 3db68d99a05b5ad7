"""Low-level WebSocket peers and process readings for the gateway tests: what a
well-behaved client library would never do (read nothing, ever), and how much the gateway
holds meanwhile."""

from __future__ import annotations

import base64
import fcntl
import os
import re
import socket
import struct
import termios
import time
from pathlib import Path


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1))  # type: ignore[union-attr]


def tcp_established(local_port: int, remote_port: int) -> bool:
    """Whether this host has an ESTABLISHED IPv4 socket local_port → remote_port."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, remote, state = line.split()[1:4]
        if (int(local.split(":")[1], 16) == local_port
                and int(remote.split(":")[1], 16) == remote_port and state == "01"):
            return True
    return False


def never_reading_client(port: int, token: str, query: str = "") -> socket.socket:
    """A WebSocket client that completes the handshake, then reads nothing (until the test
    reads with ``read_message``)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fill up early
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(f"GET /ws?token={token}{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                 "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)  # byte by byte: leave every frame unread
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def _send_masked(sock: socket.socket, opcode: int, payload: bytes) -> None:
    """A client frame (client frames must be masked: RFC 6455 5.3)."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    sock.sendall(bytes((0x80 | opcode, 0x80 | len(payload))) + mask + masked)


class Reader:
    """Reads whole data messages off a raw WebSocket client socket (fragments joined),
    answering pings as a client library would."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def message(self, timeout: float, bytes_per_s: float = 0) -> bytes:
        """The next message, read at about ``bytes_per_s`` if given. ConnectionError when
        the server closes, TimeoutError when no whole message came within ``timeout``."""
        sock = self.sock
        message = b""
        deadline = time.monotonic() + timeout
        chunk = max(1, int(bytes_per_s / 10)) if bytes_per_s else 65536
        while True:
            while len(self.buf) >= 2:
                buf = self.buf
                fin, opcode, n = buf[0] & 0x80, buf[0] & 0x0F, buf[1] & 0x7F
                start = 2
                if n == 126:
                    if len(buf) < 4:
                        break
                    n, start = struct.unpack("!H", buf[2:4])[0], 4
                elif n == 127:
                    if len(buf) < 10:
                        break
                    n, start = struct.unpack("!Q", buf[2:10])[0], 10
                if len(buf) < start + n:
                    break
                payload, self.buf = buf[start:start + n], buf[start + n:]
                if opcode == 0x9:
                    _send_masked(sock, 0xA, payload)
                elif opcode == 0x8:
                    raise ConnectionError(f"closed by the server: {payload[:2].hex()}")
                elif opcode in (0x0, 0x1, 0x2):
                    message += payload
                    if fin:
                        return message
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no whole message within {timeout} s")
            sock.settimeout(left)
            try:
                data = sock.recv(chunk)
            except TimeoutError:
                raise TimeoutError(f"no whole message within {timeout} s") from None
            if not data:
                raise ConnectionError("closed by the server")
            self.buf += data
            if bytes_per_s:
                time.sleep(len(data) / bytes_per_s)


def unread_bytes(sock: socket.socket) -> int:
    """Bytes waiting in this socket's receive queue (what the peer sent that nobody read)."""
    raw = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4)
    return int(struct.unpack("i", raw)[0])
