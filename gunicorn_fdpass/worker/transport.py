"""The client socket as the connection loop uses it: blocking reads and sends, ``sendfile()``,
"is anything readable now?", and the orderly end of a connection."""

from __future__ import annotations

import select
import socket
import ssl
import time
from collections.abc import Callable
from typing import IO, Final, ParamSpec, TypeVar, cast

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

_P = ParamSpec("_P")
_T = TypeVar("_T")


class ClientGone(FdpassError):
    """Sending to the client failed: nothing more can be sent on this connection."""


class Transport:
    """One client socket. The first failed send makes it dead for good."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        # sendfile() and the pre-close discard need the raw socket, not a TLS session.
        self.plain = not isinstance(sock, ssl.SSLSocket)
        self.dead = False  # a send failed: the connection can carry nothing more
        self.shut = False  # already shut down

    def recv(self, size: int) -> bytes:
        """One blocking ``recv()``; raises TimeoutError or OSError."""
        return self.sock.recv(size)

    def blocking(self) -> bool:
        """False if the socket is non-blocking, which ``sendfile()`` refuses."""
        return self.sock.gettimeout() != 0

    def sendall(self, data: bytes) -> None:
        """Send all of ``data``; :class:`ClientGone` if the connection failed, now or before."""
        self._send(self.sock.sendall, data)

    def sendfile(self, file: IO[bytes], offset: int, count: int) -> int:
        """Send up to ``count`` bytes of ``file`` from ``offset``; the number sent."""
        return self._send(self.sock.sendfile, file, offset, count)

    def _send(self, send: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        if self.dead:
            raise ClientGone("connection already failed")
        try:
            return send(*args, **kwargs)
        except OSError as exc:
            self.dead = True
            raise ClientGone(str(exc) or type(exc).__name__) from exc

    def readable_now(self) -> bool:
        """True if a recv() would not block (data, EOF or an error is pending)."""
        if not self.plain and cast(ssl.SSLSocket, self.sock).pending():
            return True
        try:
            poller = select.poll()
            poller.register(self.sock, select.POLLIN)
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return True  # let recv() report the problem

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
        readable now."""
        if self.shut:
            return
        self.shut = True
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            return
        if not self.plain or client_done:
            return
        deadline = time.monotonic() + linger
        total = 0
        try:
            while total < _MAX_DISCARD and self._readable_by(deadline):
                data = self.sock.recv(RECV_SIZE)
                if not data:
                    return
                total += len(data)
        except OSError:
            return

    def _readable_by(self, deadline: float) -> bool:
        """True if a recv() would not block now or becomes possible before ``deadline``."""
        wait = deadline - time.monotonic()
        if wait <= 0:
            return self.readable_now()
        try:
            poller = select.poll()
            poller.register(self.sock, select.POLLIN)
            return bool(poller.poll(wait * 1000))
        except (OSError, ValueError):
            return True  # let recv() report the problem
