"""The master's hot path: accept + peek, the hand-off ``sendmsg``, batched channel reads.

Two implementations with one API: the C extension :mod:`gunicorn_fdpass.master._core`
(built by ``pip install``; see docs/benchmarks.md for why C) and the pure-Python functions
below, used when the extension is missing or ``FDPASS_NO_EXTENSIONS=1`` is set (as aiohttp's
``AIOHTTP_NO_EXTENSIONS``). :data:`core` is whichever is in use; :data:`COMPILED` says which.

Everything works on raw file descriptors, so the compiled path makes no Python socket object
per connection (building one costs a ``getsockname``). Nothing here keeps state or decides
policy. A peek's verdict only sorts out the plain case, a whole request head with nothing else
to decide (a method first, no body framing field, no PROXY line, not over the peek limit):
:data:`PLAIN`. Bytes that need more thought are :data:`OTHER` and go to the master's Python
logic unchanged (:func:`gunicorn_fdpass.http.arrival.classify`, which also refuses what cannot
begin a request).
"""

from __future__ import annotations

import array
import errno
import importlib
import os
import re
import socket
import sys
from typing import Final, Protocol

from ..compiled import extensions_disabled

#: A method, a whole head and nothing else to decide: hand it out as it is.
PLAIN: Final = 1
#: Nothing arrived yet.
WAIT: Final = 2
#: Part of a head arrived, and it begins with a method (or the start of one).
STARTED: Final = 3
#: The client hung up or the socket failed.
GONE: Final = 4
#: Bytes whose fate the Python logic decides (body framing, PROXY, over the peek limit, or
#: no method first: bytes to refuse).
OTHER: Final = 5

#: Messages :func:`recv_batch` reads at most in one call.
RECV_BATCH: Final = 16
#: ``recv_batch`` status: nothing more waiting (or a full batch was read).
RECV_OK: Final = 0
#: ``recv_batch`` status: the peer hung up.
RECV_GONE: Final = 1
#: ``recv_batch`` status: a datagram larger than any message arrived.
RECV_TOO_LONG: Final = 2

_HEADER_SIZE: Final = 13
_MAX_MESSAGE: Final = _HEADER_SIZE + 64 * 1024
_HANDOFF: Final = 2
_END_OF_HEAD: Final = re.compile(rb"\n\r?\n")  # as http.head.END_OF_HEAD
_FRAMING: Final = re.compile(rb"\n(?:content-length|transfer-encoding)[ \t]*:", re.IGNORECASE)
_METHOD: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]*")  # as http.request_rules.TOKEN
_PEEK: Final = socket.MSG_PEEK | socket.MSG_DONTWAIT
_RECV_FLAGS: Final = int(socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC)
_ANCILLARY: Final = socket.CMSG_SPACE(array.array("i").itemsize)
_GONE_ERRNOS: Final = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN,
                                 errno.ECONNREFUSED})


def classify(data: bytes | bytearray, n: int, max_peek: int) -> int:
    """The verdict for the first ``n`` peeked bytes of ``data`` (``n`` >= 0)."""
    if n == 0:
        return GONE
    if n > max_peek:
        return OTHER
    # A request line begins with a method and a space; anything else (a TLS record, a control
    # byte, an empty line, a PROXY v2 signature) and a PROXY v1 line are for http.arrival,
    # which refuses bad bytes at once: never "wait" for them here.
    found = _METHOD.match(data, 0, n)  # matches, maybe empty
    method = found.end() if found is not None else 0
    if method == n:
        return STARTED
    if method == 0 or data[method] != 0x20 or data[:method] == b"PROXY":
        return OTHER
    match = _END_OF_HEAD.search(data, 0, n)
    if match is None:
        return STARTED
    if _FRAMING.search(data, 0, match.end()):
        return OTHER
    return PLAIN


def peek(fd: int, buf: bytearray, max_peek: int) -> int:
    """Peek (``MSG_PEEK``, nothing consumed) at client socket ``fd``; return its verdict."""
    if len(buf) < max_peek + 1:
        raise ValueError("peek buffer must hold max_peek + 1 bytes")
    # A socket object over the fd only for this call: detach() leaves the fd open.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0, fileno=fd)
    try:
        n = sock.recv_into(buf, len(buf), _PEEK)
    except BlockingIOError:
        return WAIT
    except OSError:
        return GONE
    finally:
        sock.detach()
    return classify(buf, n, max_peek)


def accept_batch(listener_fd: int, limit: int, buf: bytearray,
                 max_peek: int) -> tuple[list[tuple[int, int]], int]:
    """Accept up to ``limit`` connections (close-on-exec) and peek at each.

    Returns ``[(fd, verdict), ...]`` and 0 when the backlog ran empty or ``limit`` was
    reached, else the ``errno`` that stopped ``accept``.
    """
    listener = socket.socket(fileno=listener_fd)
    out: list[tuple[int, int]] = []
    err = 0
    try:
        while len(out) < limit:
            try:
                fd, _ = listener._accept()  # type: ignore[attr-defined]  # no socket object
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno == errno.ECONNABORTED:
                    continue
                err = exc.errno or errno.EIO
                break
            out.append((fd, peek(fd, buf, max_peek)))
    finally:
        listener.detach()
    return out, err


def send_handoff(inbox_fd: int, conn_id: int, family: int, prefix: bytes,
                 client_fd: int) -> bool:
    """Send one HANDOFF message with ``client_fd`` attached (``SCM_RIGHTS``).

    False when the inbox is full; ``OSError`` for anything else.
    """
    if len(prefix) > 64 * 1024 or family < 0:
        raise ValueError("handoff prefix too long or bad family")
    header = _HANDOFF.to_bytes(1, "big") + family.to_bytes(4, "big") + conn_id.to_bytes(8, "big")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET, 0, fileno=inbox_fd)
    try:
        sock.sendmsg([header + prefix], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                          array.array("i", [client_fd]))],
                     socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
    except BlockingIOError:
        return False
    finally:
        sock.detach()
    return True


def recv_batch(channel_fd: int) -> tuple[list[tuple[bytes, int, bool]], int]:
    """Receive up to :data:`RECV_BATCH` messages without blocking.

    Returns ``[(datagram, fd, fd_lost), ...]`` (``fd`` -1 when none came; ``fd_lost`` when one
    was cut off, ``MSG_CTRUNC``) and a status: :data:`RECV_OK`, :data:`RECV_GONE` or
    :data:`RECV_TOO_LONG`. Extra fds beside a message are closed.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET, 0, fileno=channel_fd)
    out: list[tuple[bytes, int, bool]] = []
    try:
        while len(out) < RECV_BATCH:
            try:
                data, ancdata, flags, _ = sock.recvmsg(_MAX_MESSAGE, _ANCILLARY, _RECV_FLAGS)
            except BlockingIOError:
                return out, RECV_OK
            except OSError as exc:
                if exc.errno in _GONE_ERRNOS:
                    return out, RECV_GONE
                raise
            fds = _fds_from(ancdata)
            lost = bool(flags & socket.MSG_CTRUNC)
            fd = -1 if lost or not fds else fds.pop(0)
            for extra in fds:
                os.close(extra)
            if not data:
                return out, RECV_GONE
            if flags & socket.MSG_TRUNC:
                if fd >= 0:
                    os.close(fd)
                return out, RECV_TOO_LONG
            out.append((data, fd, lost))
    finally:
        sock.detach()
    return out, RECV_OK


def _fds_from(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds = array.array("i")
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
    return list(fds)


class Core(Protocol):
    """The API both implementations have."""

    def accept_batch(self, listener_fd: int, limit: int, buf: bytearray,
                     max_peek: int, /) -> tuple[list[tuple[int, int]], int]: ...

    def peek(self, fd: int, buf: bytearray, max_peek: int, /) -> int: ...

    def send_handoff(self, inbox_fd: int, conn_id: int, family: int, prefix: bytes,
                     client_fd: int, /) -> bool: ...

    def recv_batch(self, channel_fd: int, /) -> tuple[list[tuple[bytes, int, bool]], int]: ...


def _load() -> tuple[Core, bool]:
    this = sys.modules[__name__]
    if extensions_disabled():
        return this, False
    try:
        compiled = importlib.import_module("._core", __package__)
    except ImportError:  # not built (no compiler at install time)
        return this, False
    return compiled, True


#: The implementation in use: the C extension, or this module.
core: Core
#: True when :data:`core` is the compiled extension.
COMPILED: bool
core, COMPILED = _load()
