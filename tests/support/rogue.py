"""A fake MySQL server that asks the client to switch to ``mysql_clear_password``.

It records what the client sends after the switch: a client that obeys over plain TCP
hands the password to whoever answers at that address.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading


def _pkt(seq: int, payload: bytes) -> bytes:
    return struct.pack("<I", len(payload))[:3] + bytes([seq]) + payload


def _read_pkt(c: socket.socket) -> tuple[int, bytes] | None:
    head = b""
    while len(head) < 4:
        chunk = c.recv(4 - len(head))
        if not chunk:
            return None
        head += chunk
    n, body = int.from_bytes(head[:3], "little"), b""
    while len(body) < n:
        chunk = c.recv(n - len(body))
        if not chunk:
            break
        body += chunk
    return head[3], body


class ClearTextServer:
    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self._sock.settimeout(0.2)
        self.port: int = self._sock.getsockname()[1]
        self.received: list[bytes] = []  # what clients sent after the switch request
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> ClearTextServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            with conn, contextlib.suppress(OSError):
                self._handle(conn)

    def _handle(self, c: socket.socket) -> None:
        c.settimeout(3)
        caps = 0x1 | 0x200 | 0x8000 | 0x80000  # long password, 4.1, secure conn, plugin auth
        salt = b"abcdefghijklmnopqrst"
        hello = (bytes([10]) + b"5.7.0-rogue\0" + struct.pack("<I", 1) + salt[:8] + b"\0"
                 + struct.pack("<H", caps & 0xFFFF) + bytes([45]) + struct.pack("<H", 2)
                 + struct.pack("<H", caps >> 16) + bytes([21]) + b"\0" * 10 + salt[8:]
                 + b"\0" + b"mysql_native_password\0")
        c.sendall(_pkt(0, hello))
        got = _read_pkt(c)
        if got is None:
            return
        c.sendall(_pkt(got[0] + 1, b"\xfe" + b"mysql_clear_password\0"))
        answer = _read_pkt(c)
        if answer is not None:
            self.received.append(answer[1])
            c.sendall(_pkt(answer[0] + 1, b"\xff" + struct.pack("<H", 1045) + b"#28000denied"))
