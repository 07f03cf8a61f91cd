"""What comes in: the listeners, accept, waiting for a whole request head, back-pressure.

A connection reaches a worker only once its whole request head has arrived, so silent and
slow clients never occupy a worker: the master peeks (without consuming) until the head is
complete, and times them out itself (408 if they started a request). When the queue or the
number of connections the master holds reaches its bound, the listeners leave epoll and new
clients wait in the kernel's backlog instead of in the master's memory.
"""

from __future__ import annotations

import errno
import itertools
import os
import select
import socket
from collections.abc import Callable, Iterable
from enum import Enum
from typing import TYPE_CHECKING, Any, Final

from ..http.head import END_OF_HEAD, head_complete
from ..http.serialize import error_message
from .fastpath import GONE, PLAIN, STARTED, WAIT, core
from .handoff import Handoff
from .loop import EventLoop
from .states import ClientConnection, ConnState
from .table import ConnectionTable

if TYPE_CHECKING:
    from .dispatcher import DispatchSettings

#: Connections accepted from one listener per readiness event, so a flood on one listener
#: cannot starve the channels and other listeners.
ACCEPT_BATCH: Final = 64

#: Most bytes the master peeks at while waiting for a head (its one peek buffer). Gunicorn's
#: default limits allow heads of about 800 KiB; a head longer than this without its end is
#: handed over anyway and the worker reads (or refuses) the rest, so unlimited request limits
#: cannot make the master allocate hundreds of megabytes.
MAX_PEEK: Final = 1024 * 1024

#: Pause before accepting again after the master ran out of fds (EMFILE and friends).
ACCEPT_BACKOFF: Final = 0.5

_RESOURCE_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_PEEK: Final = socket.MSG_PEEK | socket.MSG_DONTWAIT
_TLS_HANDSHAKE: Final = 0x16
#: The client closed its side or the connection failed: a head in progress cannot complete.
_HUNG_UP: Final = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
_PARKED_IDLE: Final = ConnState.PARKED_IDLE


class _Verdict(Enum):
    READY = 1  # a whole request head (or enough bytes for the worker to refuse it)
    WAIT = 2  # nothing yet
    STARTED = 3  # a head in progress
    GONE = 4  # the client hung up or the socket failed


_READY: Final = _Verdict.READY
_GONE: Final = _Verdict.GONE


class Intake:
    """Accepts connections and watches them until their request head is complete."""

    __slots__ = ("_accepting", "_clock", "_closing", "_handoff", "_ids", "_listener_fds",
                 "_listeners", "_loop", "_max_peek", "_out_of_fds", "_peek_buf", "_settings",
                 "_stats", "_table", "log", "paused_until")

    def __init__(self, loop: EventLoop, table: ConnectionTable, handoff: Handoff,
                 settings: DispatchSettings, log: Any, stats: dict[str, int],
                 clock: Callable[[], float]) -> None:
        self._loop = loop
        self._table = table
        self._handoff = handoff
        self.log = log
        self._stats = stats
        self._clock = clock
        self._listeners: list[socket.socket] = []
        self._listener_fds: list[int] = []  # registered in epoll right now
        self._accepting = True
        #: When accepting resumes after running out of fds (0: not paused for that).
        self.paused_until = 0.0
        self._out_of_fds = False
        self._closing = False
        self._ids = itertools.count(1)
        self._peek_buf = bytearray(0)
        self._max_peek = 0
        self.configure(settings)

    def configure(self, settings: DispatchSettings) -> None:
        """Use new settings from now on (the peek buffer is reused while its size holds)."""
        self._settings = settings
        self._max_peek = min(settings.max_head, MAX_PEEK)
        if len(self._peek_buf) != self._max_peek + 1:
            self._peek_buf = bytearray(self._max_peek + 1)

    @property
    def peek_buffer_size(self) -> int:
        """Bytes of the one buffer the master peeks into."""
        return len(self._peek_buf)

    def set_listeners(self, listeners: Iterable[socket.socket]) -> None:
        """Accept on exactly these sockets from now on (Gunicorn owns and closes them)."""
        wanted = list(listeners)
        if len(wanted) == len(self._listeners) and all(
            a is b for a, b in zip(wanted, self._listeners, strict=True)
        ):
            return
        # Unregister first: a listener closed by Gunicorn may share its old fd number with a
        # new one (reload with a new --bind).
        self._unregister_listeners()
        self._listeners = wanted
        for listener in wanted:
            listener.setblocking(False)
        self._register_listeners()

    def stop_accepting(self) -> None:
        """For good (graceful stop): accept nothing more."""
        self._closing = True
        self._pause_accepting()

    def close(self) -> None:
        """Let go of the listeners."""
        self._unregister_listeners()
        self._listeners = []

    def forget_in_child(self) -> None:
        """In a forked child: the listeners are Gunicorn's; only forget them here."""
        self._listeners = []
        self._listener_fds = []

    def resume_if_due(self, now: float) -> None:
        """Start accepting again if a pause is over and there is room."""
        if self.paused_until and now >= self.paused_until:
            self.paused_until = 0.0
        table = self._table
        if (not self._accepting and not self.paused_until and not self._closing
                and len(table.queue) < self._settings.max_queue
                and len(table.queue) + len(table.watched) < self._settings.max_connections):
            self._accepting = True
            self._register_listeners()

    def expire(self, now: float) -> None:
        """Close the watched connections whose timer ran out; 408 for a head under way."""
        table = self._table
        for conn in table.idle.expired(now):
            table.close(conn)
        server = self._settings.server_software
        for timer in (table.new, table.started):
            for conn in timer.expired(now):
                self._stats["timed_out"] += 1
                # A client cut off in the middle of a request is told why.
                answer = error_message(408, server).data if conn.has_bytes() else None
                table.close(conn, answer)

    def on_listener(self, listener: socket.socket, _: int) -> None:
        """A listener is readable: accept a batch of connections."""
        settings = self._settings
        table = self._table
        room = min(ACCEPT_BATCH, settings.max_queue - len(table.queue),
                   settings.max_connections - len(table.queue) - len(table.watched))
        if room <= 0 or settings.tls:
            self._accept_one_by_one(listener)
            return
        # The fast path: accept and peek in one call, raw fds, no socket objects.
        batch, err = core.accept_batch(listener.fileno(), room, self._peek_buf, self._max_peek)
        if batch:
            if self._out_of_fds:
                self._out_of_fds = False
                self.log.warning("accept() works again")
            self._stats["accepted"] += len(batch)
            now = self._clock()
            family = listener.family
            ids = self._ids
            for fd, verdict in batch:
                self._place(ClientConnection(next(ids), None, b"", fd, family), verdict, now)
        if err:
            self._accept_failed(OSError(err, os.strerror(err)))
        elif len(batch) == room < ACCEPT_BATCH:
            self._accept_one_by_one(listener)  # at a bound: evict an idle one, or pause

    def _place(self, conn: ClientConnection, verdict: int, now: float) -> None:
        """Where a just-accepted connection goes, by its first peek's verdict."""
        if verdict == PLAIN:
            self._handoff.enqueue(conn, now)
        elif verdict == WAIT:
            self._table.wait_for_head(conn, now)
        elif verdict == GONE:
            self._table.close(conn)
        else:  # needs a closer look than the fast path's
            self._place_inspected(conn, self._inspect(conn))

    def _place_inspected(self, conn: ClientConnection, verdict: _Verdict) -> None:
        if verdict is _READY:
            self._handoff.enqueue(conn, self._clock())
        elif verdict is not _GONE:
            self._table.wait_for_head(conn, self._clock())
        else:
            self._table.close(conn)

    def _accept_one_by_one(self, listener: socket.socket) -> None:
        """Accept with a look at the bounds before each one (back-pressure, eviction, TLS)."""
        for _ in range(ACCEPT_BATCH):
            if not self._room_for_one_more():
                # Back-pressure: let clients wait in the kernel backlog, not in our memory.
                self._pause_accepting()
                return
            try:
                sock, _addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno == errno.ECONNABORTED:
                    continue
                self._accept_failed(exc)
                return
            if self._out_of_fds:
                self._out_of_fds = False
                self.log.warning("accept() works again")
            self._stats["accepted"] += 1
            conn = ClientConnection(next(self._ids), sock)
            self._place_inspected(conn, self._inspect(conn))  # the request is often there

    def _accept_failed(self, exc: OSError) -> None:
        if exc.errno in _RESOURCE_ERRNOS:
            self._out_of_fds_now(exc)
            return
        raise exc

    def on_client(self, conn: ClientConnection, events: int) -> None:
        """A watched connection has an event: is its head complete now?"""
        if not conn.prefix and not self._settings.tls:
            verdict = core.peek(conn.fd, self._peek_buf, self._max_peek)
            if verdict == PLAIN:
                self._handoff.enqueue(conn, self._clock())
                return
            if verdict == GONE or (verdict == WAIT and events & _HUNG_UP):
                self._table.close(conn)
                return
            if verdict == WAIT:
                return
            if verdict == STARTED and not events & _HUNG_UP:
                if conn.state is _PARKED_IDLE:
                    self._table.head_began(conn, self._clock())
                return
        self._on_client_inspected(conn, events)

    def _on_client_inspected(self, conn: ClientConnection, events: int) -> None:
        verdict = self._inspect(conn)
        if verdict is _GONE or (verdict is not _READY and events & _HUNG_UP):
            # A peek keeps returning the unread partial head, so it cannot see that the
            # client closed or reset meanwhile; epoll's hang-up flags can.
            self._table.close(conn)
        elif verdict is _READY:
            self._handoff.enqueue(conn, self._clock())
        elif verdict is _Verdict.STARTED and conn.state is _PARKED_IDLE:
            self._table.head_began(conn, self._clock())

    def _inspect(self, conn: ClientConnection) -> _Verdict:
        """Look at what the client sent so far, without consuming it."""
        buf = self._peek_buf
        try:
            n = conn.sock.recv_into(buf, len(buf), _PEEK)
        except BlockingIOError:
            n = -1
        except OSError:
            return _GONE
        if n == 0:
            return _GONE  # end of file: the client hung up
        if n < 0 and not conn.prefix:
            return _Verdict.WAIT
        if self._settings.tls:
            return _READY if _tls_record_complete(buf, n) else _Verdict.STARTED
        if conn.prefix:
            data = conn.prefix + (bytes(buf[:n]) if n > 0 else b"")
            done = head_complete(data) or len(data) > self._max_peek
        else:
            done = n > self._max_peek or END_OF_HEAD.search(buf, 0, n) is not None
        return _READY if done else _Verdict.STARTED

    def _room_for_one_more(self) -> bool:
        table = self._table
        settings = self._settings
        if len(table.queue) >= settings.max_queue:
            return False
        if len(table.queue) + len(table.watched) < settings.max_connections:
            return True
        oldest_idle = table.idle.oldest()
        if oldest_idle is None:
            return False
        self._stats["evicted"] += 1  # worker_connections reached: the longest idle one goes
        table.close(oldest_idle)
        return True

    def _out_of_fds_now(self, exc: OSError) -> None:
        if not self._out_of_fds:
            self._out_of_fds = True
            self.log.error("accept() failed: %s; pausing accepts (retrying every %.1fs "
                           "until fds are free)", exc.strerror, ACCEPT_BACKOFF)
        self.paused_until = self._clock() + ACCEPT_BACKOFF
        self._pause_accepting()

    def _pause_accepting(self) -> None:
        if self._accepting:
            self._accepting = False
            self._unregister_listeners()

    def _register_listeners(self) -> None:
        if self._accepting and not self._listener_fds:
            for listener in self._listeners:
                fd = listener.fileno()
                self._loop.watch(fd, select.EPOLLIN, self.on_listener, listener)
                self._listener_fds.append(fd)

    def _unregister_listeners(self) -> None:
        fds, self._listener_fds = self._listener_fds, []
        for fd in fds:
            self._loop.unwatch_closed(fd)


def _tls_record_complete(buf: bytearray, n: int) -> bool:
    """True once the first TLS record (the ClientHello) has fully arrived.

    Anything that is not a TLS handshake record is handed over at once: the worker's TLS
    layer refuses it with a proper alert.
    """
    if n <= 0:
        return False
    if buf[0] != _TLS_HANDSHAKE:
        return True
    return n >= 5 and n >= 5 + int.from_bytes(buf[3:5], "big")
