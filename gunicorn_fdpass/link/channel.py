"""The master<->worker channel: the only module that calls ``sendmsg``/``recvmsg``.

A :class:`Channel` is one end of a ``SOCK_SEQPACKET`` socketpair made in the master before the
fork (each worker has two: its channel and its inbox). Each datagram is one
:mod:`~gunicorn_fdpass.link.messages` message, optionally with one fd as ``SCM_RIGHTS``.
OS errors are translated here, once, into :class:`~gunicorn_fdpass.errors.PeerGone` (the other
side died or hung up) and :class:`~gunicorn_fdpass.errors.ChannelClosed` (we closed it).
"""

from __future__ import annotations

import array
import errno
import os
import socket
from dataclasses import dataclass

from ..errors import ChannelClosed, PeerGone, ProtocolError
from . import messages

# Room for one fd. A sender that attaches more makes the kernel set MSG_CTRUNC; we then close
# whatever did arrive, so a misbehaving peer cannot leak fds into us.
_ANCILLARY_SIZE = socket.CMSG_SPACE(array.array("i").itemsize)

# Plain ints: combining or testing socket's IntFlag members costs a Python call per message.
_RECV_FLAGS = int(socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC)
_CTRUNC = int(socket.MSG_CTRUNC)
_TRUNC = int(socket.MSG_TRUNC)

_PEER_GONE_ERRNOS = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN, errno.ECONNREFUSED})


@dataclass(frozen=True, slots=True)
class Received:
    """One message as it arrived.

    ``fd`` is the descriptor that came with it (now owned by the receiver), or ``None``.
    ``fd_lost`` is true when the message should have carried an fd but the kernel could not
    deliver it (``MSG_CTRUNC``: typically the receiver is at its fd limit).
    """

    message: messages.Message
    fd: int | None
    fd_lost: bool


class Channel:
    """One end of a master<->worker socketpair."""

    __slots__ = ("_buf", "_sock")

    def __init__(self, sock: socket.socket) -> None:
        self._sock: socket.socket | None = sock
        # One receive buffer per channel: recvmsg() would allocate (and shrink) a buffer of
        # the largest message size for every message.
        self._buf = bytearray(messages.MAX_MESSAGE)

    @classmethod
    def pair(cls) -> tuple[Channel, Channel]:
        """Make a connected pair: (master end, worker end). Both are close-on-exec."""
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        return cls(a), cls(b)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called; the fd number is forgotten then."""
        return self._sock is None

    def fileno(self) -> int:
        """The fd, for selectors. Raises :class:`ChannelClosed` after :meth:`close`."""
        return self._live().fileno()

    def set_blocking(self, blocking: bool) -> None:
        """Blocking sends suit a worker; the master never blocks on a worker."""
        self._live().setblocking(blocking)

    def send(self, message: messages.Message, fd: int | None = None) -> bool:
        """Send one message, with ``fd`` attached if given.

        Returns False if the channel is non-blocking and its buffer is full (nothing was sent).
        Raises :class:`PeerGone` if the other end is gone.
        """
        if fd is None and messages.carries_fd(message):
            raise ProtocolError(f"{type(message).__name__} must be sent with exactly one fd")
        if fd is not None and not messages.carries_fd(message):
            raise ProtocolError(f"{type(message).__name__} carries no fd")
        data = messages.encode(message)
        ancillary = []
        if fd is not None:
            ancillary.append((socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd])))
        sock = self._live()
        try:
            # EINTR is retried by Python itself (PEP 475).
            sock.sendmsg([data], ancillary)
        except BlockingIOError:
            return False
        except OSError as exc:
            raise self._translate(exc) from exc
        return True

    def recv(self) -> Received | None:
        """Receive one message without blocking; None if none is waiting.

        Raises :class:`PeerGone` at EOF or when the peer reset the channel, and
        :class:`~gunicorn_fdpass.errors.ProtocolError` for a malformed datagram.
        """
        sock = self._live()
        try:
            size, ancdata, flags, _ = sock.recvmsg_into([self._buf], _ANCILLARY_SIZE,
                                                        _RECV_FLAGS)
        except BlockingIOError:
            return None
        except OSError as exc:
            raise self._translate(exc) from exc
        if not size:
            # A zero-length datagram never comes from our peer: it is end of file.
            raise PeerGone("channel peer hung up")
        fds = _fds_from(ancdata) if ancdata else []
        truncated = bool(flags & _CTRUNC)
        try:
            if flags & _TRUNC:
                raise ProtocolError(f"datagram larger than {messages.MAX_MESSAGE} bytes")
            message = messages.decode(bytes(self._buf[:size]))
        except ProtocolError:
            _close_all(fds)
            raise
        if not messages.carries_fd(message) or truncated or len(fds) != 1:
            _close_all(fds)
            return Received(message, None, fd_lost=messages.carries_fd(message))
        return Received(message, fds[0], fd_lost=False)

    def close(self) -> None:
        """Close this end. Idempotent; the fd number is forgotten at once."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def _live(self) -> socket.socket:
        if self._sock is None:
            raise ChannelClosed("channel already closed")
        return self._sock

    def _translate(self, exc: OSError) -> Exception:
        if exc.errno in _PEER_GONE_ERRNOS:
            return PeerGone(f"channel peer gone: {os.strerror(exc.errno or 0)}")
        if exc.errno == errno.EBADF:
            return ChannelClosed("channel fd is closed")
        return exc

    def __repr__(self) -> str:
        state = "closed" if self._sock is None else f"fd={self._sock.fileno()}"
        return f"<Channel {state}>"


def socket_from_fd(fd: int, family: int = 0) -> socket.socket:
    """Wrap a received stream fd; a known ``family`` (from the message) spares the
    ``getsockname``/``getsockopt`` calls Python otherwise makes to detect it."""
    if family:
        return socket.socket(family, socket.SOCK_STREAM, 0, fileno=fd)
    return socket.socket(fileno=fd)


def _fds_from(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            usable = len(data) - len(data) % arr.itemsize
            arr.frombytes(data[:usable])
            fds.extend(arr)
    return fds


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)
