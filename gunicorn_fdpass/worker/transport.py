"""The client socket as the connection loop uses it: blocking reads and sends with a timeout,
``sendfile()``, "is anything readable now?", and the orderly end of a connection.

A plain (not TLS) socket stays blocking to Python, and every call passes ``MSG_DONTWAIT``:
the call that can proceed at once (nearly every one: the master hands a connection over once
its request arrived) costs one system call, and only one that would block waits in
``poll()`` for the rest of the timeout. Python's own socket timeout would cost an ``ioctl``
per connection to set and a ``poll()`` before every read and send. A TLS socket keeps
Python's timeout: the ``ssl`` module takes no flags.
"""

from __future__ import annotations

import select
import socket
import ssl
import time
from typing import IO, Final, cast

from ..errors import FdpassError

__all__ = ["LINGER_SECONDS", "RECV_SIZE", "ClientGone", "Transport"]

RECV_SIZE: Final = 64 * 1024
# Bytes the client sent that we will never read, discarded before closing: closing a socket
# with unread data makes the kernel send RST, which can destroy the response still in flight.
_MAX_DISCARD: Final = 256 * 1024
#: After an error answer, or with a request body left unread, the client may still be
#: sending: the worker waits this long at most for it to stop (lingering close), reading
#: and dropping what comes, so that its close is a FIN and not a reset.
LINGER_SECONDS: Final = 1.0

# Plain ints: combining socket's IntFlag members costs a Python call each time.
_DONTWAIT: Final = int(socket.MSG_DONTWAIT)
# "More data follows": the kernel holds a partly filled segment instead of sending it; the
# shutdown() that follows adds the FIN to it and sends both. Not on every system (0: none).
_MORE: Final = int(getattr(socket, "MSG_MORE", 0))
_POLLIN: Final = select.POLLIN
_POLLOUT: Final = select.POLLOUT


class ClientGone(FdpassError):
    """Sending to the client failed: nothing more can be sent on this connection."""


class Transport:
    """One client socket. The first failed send makes it dead for good."""

    __slots__ = ("dead", "fin_sent", "plain", "shut", "sock", "timeout")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        # sendfile() and the pre-close discard need the raw socket, not a TLS session.
        self.plain = not isinstance(sock, ssl.SSLSocket)
        self.dead = False  # a send failed: the connection can carry nothing more
        self.shut = False  # already shut down
        self.fin_sent = False  # our sending side is shut (send_last), the rest of finish() not
        self.timeout: float | None = None  # seconds a read or send may wait (None: forever)

    def set_timeout(self, timeout: float | None) -> None:
        """How long one read, or one whole send, may wait for the client. Raises OSError
        if the socket is unusable."""
        self.timeout = timeout
        if not self.plain:
            self.sock.settimeout(timeout)
        elif self.sock.gettimeout() is not None:
            # A default timeout (socket.setdefaulttimeout) would make Python poll before
            # each MSG_DONTWAIT call, and wait there: make the object blocking again.
            self.sock.settimeout(None)

    def recv(self, size: int) -> bytes:
        """One read, waiting up to the timeout; raises TimeoutError or OSError."""
        if not self.plain:
            return self.sock.recv(size)
        try:
            return self.sock.recv(size, _DONTWAIT)
        except BlockingIOError:
            pass
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            if not self._wait(_POLLIN, deadline):
                raise TimeoutError("timed out")
            try:
                return self.sock.recv(size, _DONTWAIT)
            except BlockingIOError:
                continue

    def recv_now(self, size: int) -> bytes | None:
        """Read what has arrived without waiting: None if nothing has (b"": EOF). Raises
        OSError."""
        if self.plain:
            try:
                return self.sock.recv(size, _DONTWAIT)
            except BlockingIOError:
                return None
        if not self.readable_now():
            return None
        return self.sock.recv(size)

    def blocking(self) -> bool:
        """False if the socket is non-blocking, which ``sendfile()`` refuses."""
        return self.sock.gettimeout() != 0

    def sendall(self, data: bytes) -> None:
        """Send all of ``data``; :class:`ClientGone` if the connection failed, now or before."""
        self._send(data, _DONTWAIT)

    def send_last(self, data: bytes) -> None:
        """Send all of ``data``, the last bytes of the connection, and shut our sending side
        at once (the rest of :meth:`finish` still follows). The FIN then leaves in the
        segment that ends the data instead of in one of its own: one packet fewer for both
        ends to process. :class:`ClientGone` as :meth:`sendall`."""
        if not self.plain or self.dead or self.shut or not _MORE:
            self.sendall(data)
            return
        self._send(data, _DONTWAIT | _MORE)
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.shut = True  # as finish() after a failed shutdown: nothing more to do
            return
        self.fin_sent = True

    def _send(self, data: bytes, flags: int) -> None:
        """All of ``data``, the first send with ``flags`` (a plain socket); ClientGone as
        :meth:`sendall`."""
        if self.dead:
            raise ClientGone("connection already failed")
        try:
            if not self.plain:
                self.sock.sendall(data)
                return
            sent = self.sock.send(data, flags)
            if sent < len(data):
                self._send_rest(memoryview(data)[sent:])
        except OSError as exc:
            self.dead = True
            raise ClientGone(str(exc) or type(exc).__name__) from exc

    def _send_rest(self, view: memoryview) -> None:
        """What one send could not take, waiting for room; the timeout bounds the whole
        rest, as Python's ``sendall`` does."""
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while view:
            if not self._wait(_POLLOUT, deadline):
                raise TimeoutError("timed out")
            try:
                view = view[self.sock.send(view, _DONTWAIT):]
            except BlockingIOError:
                continue

    def sendfile(self, file: IO[bytes], offset: int, count: int) -> int:
        """Send up to ``count`` bytes of ``file`` from ``offset``; the number sent."""
        if self.dead:
            raise ClientGone("connection already failed")
        sock = self.sock
        try:
            # socket.sendfile() waits with Python's own timeout, so set it for the call.
            restore = sock.gettimeout()
            sock.settimeout(self.timeout)
            try:
                return sock.sendfile(file, offset, count)
            finally:
                sock.settimeout(restore)
        except OSError as exc:
            self.dead = True
            raise ClientGone(str(exc) or type(exc).__name__) from exc

    def readable_now(self) -> bool:
        """True if a recv() would not block (data, EOF or an error is pending)."""
        if not self.plain and cast(ssl.SSLSocket, self.sock).pending():
            return True
        return self._wait(_POLLIN, 0.0)

    def _wait(self, events: int, deadline: float | None) -> bool:
        """Wait until the socket is ready for ``events`` or ``deadline`` (monotonic; None:
        no end) passes; True if ready (or in error, for the next call to report)."""
        wait_ms = -1.0 if deadline is None else max(0.0, deadline - time.monotonic()) * 1000
        try:
            poller = select.poll()
            poller.register(self.sock, events)
            return bool(poller.poll(wait_ms))
        except (OSError, ValueError):
            return True  # let the next call report the problem

    def abort(self) -> None:
        """Shut down both directions at once: the client sees a truncated response."""
        self.shut = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def finish(self, client_done: bool, linger: float = 0.0) -> None:
        """End the connection in order: shut our sending side, then (unless ``client_done``,
        it sent EOF) discard a bounded amount of what the client still sends, so that closing
        does not reset the connection under the last response. With ``linger``, wait up to
        that many seconds for the client to stop sending (its EOF); else only drop what is
        readable now (one read, when nothing is)."""
        if self.shut:
            return
        self.shut = True
        sock = self.sock
        if not self.fin_sent:
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                return
        if not self.plain or client_done:
            return
        deadline = time.monotonic() + linger
        total = 0
        try:
            while total < _MAX_DISCARD:
                try:
                    data = sock.recv(RECV_SIZE, _DONTWAIT)
                except BlockingIOError:
                    if linger <= 0 or not self._wait(_POLLIN, deadline):
                        return
                    continue
                if not data:
                    return
                total += len(data)
        except OSError:
            return
