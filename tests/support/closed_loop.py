"""A closed-loop keep-alive client: each connection sends its next request as soon as the
last response arrived, and stamps the moment it sends into an ``X-Sent`` header.

One thread drives every connection through a selector, so the stamp is taken right before
the ``send`` it describes: a pool of client threads would put the GIL's switch interval
(5 ms) between the two. The stamp is ``time.monotonic()``, which on Linux reads
CLOCK_MONOTONIC, one clock for every process on the machine, so the app can compare it with
its own ``time.monotonic()``.
"""

from __future__ import annotations

import selectors
import socket
import time
from dataclasses import dataclass, field

#: The header that carries the client's send time (seconds, CLOCK_MONOTONIC).
SENT_HEADER = "X-Sent"


@dataclass(frozen=True, slots=True)
class Exchange:
    """One request and its response, as the client saw them."""

    connection: int
    sent: float
    answered: float
    status: int


@dataclass(slots=True)
class _Conn:
    index: int
    sock: socket.socket
    buf: bytearray = field(default_factory=bytearray)
    sent: float = 0.0


class ClosedLoopError(AssertionError):
    """The server stalled, closed a connection, or answered something unframed."""


def _response_length(buf: bytearray) -> tuple[int, int] | None:
    """(status, total length) of the response at the start of ``buf``, once its head is in.

    Only Content-Length framing: the routes this client is used with always send one."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            return status, end + 4 + int(value.strip())
    raise ClosedLoopError(f"response without Content-Length: {lines[0]!r}")


def _send_next(conn: _Conn, port: int, target: str) -> None:
    conn.sent = time.monotonic()
    request = (f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
               f"{SENT_HEADER}: {conn.sent:.6f}\r\n\r\n").encode("ascii")
    conn.sock.sendall(request)  # a few hundred bytes into an empty send buffer: no wait


def run_closed_loop(port: int, target: str, connections: int, seconds: float,
                    stall_timeout: float = 10.0) -> list[Exchange]:
    """Keep ``connections`` keep-alive connections to 127.0.0.1:``port`` busy with
    ``GET target`` for ``seconds`` (each sends its next request as soon as its last response
    arrived); returns every exchange. Raises :class:`ClosedLoopError` when no response
    arrives for ``stall_timeout`` seconds or a connection ends."""
    sel = selectors.DefaultSelector()
    conns = [_Conn(i, socket.create_connection(("127.0.0.1", port), timeout=stall_timeout))
             for i in range(connections)]
    exchanges: list[Exchange] = []
    try:
        for conn in conns:
            sel.register(conn.sock, selectors.EVENT_READ, conn)
        stop_at = time.monotonic() + seconds
        for conn in conns:
            _send_next(conn, port, target)
        open_count = len(conns)
        while open_count:
            ready = sel.select(timeout=stall_timeout)
            if not ready:
                raise ClosedLoopError(f"no response for {stall_timeout} s; "
                                      f"{len(exchanges)} exchanges so far")
            for key, _ in ready:
                conn = key.data
                data = conn.sock.recv(65536)
                if not data:
                    raise ClosedLoopError(f"connection {conn.index} closed by the server")
                conn.buf += data
                framed = _response_length(conn.buf)
                if framed is None or len(conn.buf) < framed[1]:
                    continue
                status, length = framed
                if len(conn.buf) > length:
                    raise ClosedLoopError("bytes after a response nobody asked for")
                conn.buf.clear()
                exchanges.append(Exchange(conn.index, conn.sent, time.monotonic(), status))
                if time.monotonic() < stop_at:
                    _send_next(conn, port, target)
                else:
                    sel.unregister(conn.sock)
                    open_count -= 1
    finally:
        sel.close()
        for conn in conns:
            conn.sock.close()
    return exchanges
