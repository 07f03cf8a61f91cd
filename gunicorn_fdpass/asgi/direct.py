"""The transport of a new connection until it needs the event loop.

The master hands a connection over once its request head has arrived, and the ASGI worker
reads that head at once (:func:`ready_bytes`). Most answers then go out in one non-blocking
send, and a client that asked to close needs nothing more. For such a connection an
event-loop transport is pure cost: its creation, its poll registration, the reads and
callbacks of its end (docs/benchmarks.md, "ASGI: one request per connection", has the
system calls and the CPU before and after).

So a plain connection starts on a :class:`DirectTransport`, which writes straight to the
socket and reads nothing. The first time the connection has to wait (for bytes from the
client, or for room in a full socket buffer) it moves to a transport of the event loop
(``AsgiConnection.on_loop``); what was asked of this one in the meantime (bytes not yet
sent, our EOF, the close) is handed over in order (:meth:`DirectTransport.hand_over`).

The ASGI connection's own calls on the socket (the last send with its FIN, the shutdown, the
read that checks nothing more came) are here too (:func:`send_last`, :func:`shut_write`,
:func:`ready_bytes`), so that one module makes the direct socket calls and handles their
errors.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any, Final

__all__ = ["DirectTransport", "ready_bytes", "send_last", "shut_write"]

_DONTWAIT: Final = int(socket.MSG_DONTWAIT)
#: "More data follows": the kernel holds back the segment of a send until the shutdown right
#: after it adds the FIN (not on every system: 0, none).
_MORE: Final = int(getattr(socket, "MSG_MORE", 0))
#: Largest read made on a socket directly, as a loop transport reads.
_READ_SIZE: Final = 64 * 1024


def ready_bytes(sock: socket.socket) -> bytes:
    """What the socket holds now, without waiting: b"" if nothing (or if the read fails:
    the transport then meets the same end of the connection itself)."""
    try:
        return sock.recv(_READ_SIZE, _DONTWAIT)
    except OSError:
        return b""


def send_last(sock: socket.socket, data: bytes) -> tuple[int, bool]:
    """Send ``data``, a connection's last bytes, without waiting and, when all of it goes,
    our FIN in the same segment: one packet fewer for both ends. Returns the bytes sent (0
    also when the socket failed, or without ``MSG_MORE``: the caller's transport then sends
    them and meets the failure itself) and whether the FIN went."""
    if not _MORE:
        return 0, False
    try:
        sent = sock.send(data, _DONTWAIT | _MORE) if data else 0
    except OSError:
        return 0, False
    return sent, sent == len(data) and shut_write(sock)


def shut_write(sock: socket.socket) -> bool:
    """Our FIN now; False if the socket refuses (the connection is failing anyway)."""
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        return False
    return True


class DirectTransport(asyncio.Transport):
    """Non-blocking writes on the socket itself; nothing is read here.

    ``on_blocked`` is called once when a write does not go out whole: the connection must
    then move to the event loop, which will send the rest. Until :meth:`hand_over`, writes,
    ``write_eof``, ``close`` and ``abort`` are kept, to be done there in the same order.
    """

    def __init__(self, sock: socket.socket, protocol: asyncio.Protocol,
                 loop: asyncio.AbstractEventLoop, on_blocked: Callable[[], None]) -> None:
        super().__init__()
        self._sock = sock
        self._protocol = protocol
        self._loop = loop
        self._on_blocked = on_blocked
        self._pending = bytearray()  # not sent: the loop transport sends it first
        self._writes = 0
        self._moving = False  # a move to the loop is under way: keep what is asked
        self._eof = False  # write_eof asked while moving
        self._closing = False
        self._aborted = False
        self._done = False  # the socket was closed here, or handed over

    # -- what the connection asks ------------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        try:
            if name == "peername":
                return self._sock.getpeername()
            if name == "sockname":
                return self._sock.getsockname()
        except OSError:
            return default
        if name == "socket":
            return self._sock
        return default

    def is_closing(self) -> bool:
        return self._closing

    def can_write_eof(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        return len(self._pending)

    def is_reading(self) -> bool:
        return False

    def pause_reading(self) -> None:
        """Nothing is read here: nothing to pause."""

    def resume_reading(self) -> None:
        """Reading starts on the loop's transport (``AsgiConnection.on_loop``)."""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._done:
            return
        if self._moving:
            self._pending += data
            return
        if self._writes == 1 and self._sock.family != socket.AF_UNIX:
            # A second write (a streamed response) must not wait for the client's delayed
            # ACK of the first (Nagle), as on the loop's transports.
            self._nodelay()
        self._writes += 1
        try:
            sent = self._sock.send(data, _DONTWAIT)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._lose(exc)
            return
        if sent < len(data):
            self._pending += memoryview(data)[sent:]
            self._moving = True
            self._protocol.pause_writing()
            self._on_blocked()

    def write_eof(self) -> None:
        if self._closing or self._done:
            return
        if self._moving:
            self._eof = True
            return
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self._lose(exc)

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if not self._moving:
            self._lose(None)

    def abort(self) -> None:
        self._closing = self._aborted = True
        self._pending.clear()
        if not self._moving:
            self._lose(None)

    # -- the move to the event loop ----------------------------------------------------------

    def begin_move(self) -> bool:
        """The connection moves to the loop; False if it already ended here."""
        if self._done:
            return False
        self._moving = True
        return True

    def hand_over(self, transport: asyncio.Transport) -> None:
        """The loop's transport takes over: what was asked here is done there, in order."""
        self._done = True
        protocol = self._protocol
        del self._protocol, self._on_blocked  # no reference cycle (see _connection_lost)
        if self._aborted:
            transport.abort()
            return
        if self._pending:
            # Our pause_writing is over; the new transport says again if it needs one.
            protocol.resume_writing()
            transport.write(bytes(self._pending))
            self._pending.clear()
        if self._eof:
            transport.write_eof()
        if self._closing:
            transport.close()

    def move_failed(self, exc: Exception) -> None:
        """The loop could not take the socket (reset meanwhile): the connection ends."""
        self._moving = False
        self._pending.clear()
        self._lose(exc)

    # -- internals ---------------------------------------------------------------------------

    def _nodelay(self) -> None:
        try:
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # the send that follows meets the same problem

    def _lose(self, exc: Exception | None) -> None:
        """Close the socket; the protocol hears of it soon after, as from a loop transport."""
        self._closing = True
        if self._done:
            return
        self._done = True
        self._sock.close()
        self._loop.call_soon(self._connection_lost, exc)

    def _connection_lost(self, exc: Exception | None) -> None:
        protocol = self._protocol
        # The protocol refers to this transport: without these two, each connection would
        # leave a reference cycle for the garbage collector.
        del self._protocol, self._on_blocked
        protocol.connection_lost(exc)
