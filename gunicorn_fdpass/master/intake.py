"""What comes in: the listeners, accept, waiting for a whole request, back-pressure.

A connection reaches a worker only once its whole request head has arrived, and a small body
too (``FDPASS_BODY_BUFFER``), so silent and slow clients never occupy a worker: the master
peeks (without consuming) and asks :func:`~gunicorn_fdpass.http.arrival.classify` what the
bytes mean, and times clients out itself (408 if they started a request). Bytes that cannot
begin a request, a TLS ClientHello on a plain port and a bad or forbidden PROXY header are
answered at once. When the master holds ``max_connections`` connections, the oldest one still
sending its head makes room (408); only when nothing can go, or the queue is full, do the
listeners leave epoll, so that new clients wait in the kernel's backlog instead.

The plain case takes the compiled fast path (:mod:`.fastpath`): accept and a first peek in one
call on raw fds, and a verdict that sorts out a whole head with a method first and nothing to
decide (no body framing field, no PROXY line). Only everything else is asked of ``classify``.
"""

from __future__ import annotations

import errno
import itertools
import os
import select
import socket
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final

from ..http.arrival import READY, ArrivalRules, Kind, Verdict, classify
from ..http.serialize import error_message
from .fastpath import GONE, OTHER, PLAIN, STARTED, WAIT, core
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
#: A TLS ClientHello on a plain port is logged at most once per this many seconds.
TLS_WARNING_INTERVAL: Final = 60.0
#: Receive buffers are raised for a body the master waits for when it needs more than this.
_DEFAULT_RCVBUF: Final = 32 * 1024
#: The client closed its side or the connection failed: a head in progress cannot complete.
_HUNG_UP: Final = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
#: ... and cannot even be answered (reset, or closed both ways).
_BROKEN: Final = select.EPOLLHUP | select.EPOLLERR
_PARKED_IDLE: Final = ConnState.PARKED_IDLE
_WAITING_FOR_BODY: Final = ConnState.WAITING_FOR_BODY
_READY: Final = Kind.READY
_PARTIAL: Final = Kind.PARTIAL
_EMPTY: Final = Kind.EMPTY
_BODY: Final = Kind.BODY
#: What :meth:`Intake._inspect` says when the client hung up or the socket failed.
_GONE: Final = Verdict(Kind.EMPTY, -1)
_NOTHING: Final = Verdict(Kind.EMPTY)


class Intake:
    """Accepts connections and watches them until their request head is complete."""

    __slots__ = ("_accepting", "_clock", "_closing", "_handoff", "_ids", "_listener_fds",
                 "_listeners", "_loop", "_max_peek", "_out_of_fds", "_peek_buf", "_rules",
                 "_settings", "_stats", "_table", "_tls_warned", "log", "paused_until")

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
        self._tls_warned = -TLS_WARNING_INTERVAL
        self._rules = ArrivalRules()
        self.configure(settings)

    def configure(self, settings: DispatchSettings) -> None:
        """Use new settings from now on (the peek buffer is reused while its size holds)."""
        self._settings = settings
        self._max_peek = min(settings.max_head, MAX_PEEK)
        self._rules = ArrivalRules(max_head=self._max_peek, body_buffer=settings.body_buffer,
                                   proxy_protocol=settings.proxy_protocol, tls=settings.tls)
        # A whole head and a whole body fit; one byte more tells that more was sent.
        size = self._max_peek + settings.body_buffer + 1
        if len(self._peek_buf) != size:
            self._peek_buf = bytearray(size)

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

    @property
    def accepting(self) -> bool:
        """True while the listeners are watched (no pause, no back-pressure, no stop)."""
        return self._accepting

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
        for timer in (table.new, table.started, table.body):
            for conn in timer.expired(now):
                self._stats["timed_out"] += 1
                self._time_out(conn)
        table.linger.expire(now)

    def _time_out(self, conn: ClientConnection) -> None:
        # A client cut off in the middle of a request is told why.
        server = self._settings.server_software
        answer = error_message(408, server).data if conn.has_bytes() else None
        self._table.close(conn, answer)

    def on_listener(self, listening: tuple[socket.socket, int, int], _: int) -> None:
        """A listener is readable: accept a batch of connections.

        ``listening`` is the listener with its fd and address family, read once when it was
        registered: Gunicorn's socket wrapper answers each attribute through __getattr__.
        """
        listener, listener_fd, family = listening
        settings = self._settings
        table = self._table
        room = min(ACCEPT_BATCH, settings.max_queue - len(table.queue),
                   settings.max_connections - len(table.queue) - len(table.watched))
        if room <= 0 or settings.tls:
            self._accept_one_by_one(listener)
            return
        # The fast path: accept and peek in one call, raw fds, no socket objects.
        batch, err = core.accept_batch(listener_fd, room, self._peek_buf, self._max_peek)
        if batch:
            if self._out_of_fds:
                self._fds_again()
            self._stats["accepted"] += len(batch)
            now = self._clock()
            ids = self._ids
            for fd, verdict in batch:
                self._place(ClientConnection(next(ids), None, b"", fd, family), verdict, now)
        if err:
            self._accept_failed(OSError(err, os.strerror(err)))
        elif len(batch) == room < ACCEPT_BATCH:
            self._accept_one_by_one(listener)  # at a bound: make room, or pause

    def _place(self, conn: ClientConnection, verdict: int, now: float) -> None:
        """Where a just-accepted connection goes, by the fast path's verdict."""
        if verdict == PLAIN:
            self._handoff.enqueue(conn, now)
        elif verdict in (WAIT, STARTED):
            # STARTED: a method so far, and no end of head: what classify() calls PARTIAL.
            self._table.wait_for_head(conn, now)
        elif verdict == GONE:
            self._table.close(conn)
        else:  # OTHER: bodies, PROXY, bytes to refuse
            self._place_inspected(conn, self._inspect(conn))

    def _place_inspected(self, conn: ClientConnection, verdict: Verdict) -> None:
        kind = verdict.kind
        if kind is _READY:
            self._handoff.enqueue(conn, self._clock())
        elif verdict is _GONE:
            self._table.close(conn)
        elif kind is _EMPTY or kind is _PARTIAL:
            self._table.wait_for_head(conn, self._clock())
        else:
            self._act(conn, verdict)

    def _accept_one_by_one(self, listener: socket.socket) -> None:
        """Accept with a look at the bounds before each one (back-pressure, making room, TLS)."""
        for _ in range(ACCEPT_BATCH):
            if not self._room_for_one_more():
                # Back-pressure: let clients wait in the kernel backlog, not in our memory.
                self._pause_accepting()
                return
            try:
                sock, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno == errno.ECONNABORTED:
                    continue
                self._accept_failed(exc)
                return
            if self._out_of_fds:
                self._fds_again()
            self._make_room()
            self._stats["accepted"] += 1
            conn = ClientConnection(next(self._ids), sock)
            if self._settings.proxy_protocol != "off":
                conn.proxy_ok = self._settings.proxy_allow.allows(addr)
            self._place_inspected(conn, self._inspect(conn))  # the request is often there

    def _accept_failed(self, exc: OSError) -> None:
        if exc.errno in _RESOURCE_ERRNOS:
            self._out_of_fds_now(exc)
            return
        raise exc

    def on_client(self, conn: ClientConnection, events: int) -> None:
        """A watched connection has an event: is its request complete now?"""
        if not conn.prefix and not self._settings.tls:
            verdict = core.peek(conn.fd, self._peek_buf, self._max_peek)
            if verdict == PLAIN:
                self._handoff.enqueue(conn, self._clock())
                return
            if verdict == GONE or (verdict != OTHER and events & _HUNG_UP):
                # A peek keeps returning the unread partial head, so it cannot see that the
                # client closed or reset meanwhile; epoll's hang-up flags can.
                self._table.close(conn)
                return
            if verdict == WAIT:
                return
            if verdict == STARTED:
                if conn.state is _PARKED_IDLE:
                    self._table.head_began(conn, self._clock())
                return
        self._on_client_inspected(conn, events)

    def _on_client_inspected(self, conn: ClientConnection, events: int) -> None:
        verdict = self._inspect(conn)
        kind = verdict.kind
        if kind is _READY:
            self._handoff.enqueue(conn, self._clock())
        elif verdict is _GONE or (events & _HUNG_UP and kind is not Kind.REFUSE
                                  and kind is not Kind.TLS):
            # A peek keeps returning the unread partial request, so it cannot see that the
            # client closed or reset meanwhile; epoll's hang-up flags can.
            if kind is _BODY and not events & _BROKEN:
                # It shut its side in the middle of a body: the worker reads what came and
                # answers it as it did before bodies waited here.
                self._handoff.enqueue(conn, self._clock())
            else:
                self._table.close(conn)
        elif kind is _PARTIAL:
            if conn.state is _PARKED_IDLE:
                self._table.head_began(conn, self._clock())
        elif kind is not _EMPTY:
            self._act(conn, verdict)

    def _act(self, conn: ClientConnection, verdict: Verdict) -> None:
        """A body on its way, or bytes to refuse at once."""
        if verdict.kind is _BODY:
            if conn.state is not _WAITING_FOR_BODY:
                if self._fit_body(conn, verdict.value):
                    self._table.wait_for_body(conn, self._clock())
                else:
                    self._handoff.enqueue(conn, self._clock())  # as before: the worker reads it
            return
        self._stats["rejected"] += 1
        if verdict.kind is Kind.TLS:
            now = self._clock()
            if now - self._tls_warned >= TLS_WARNING_INTERVAL:
                self._tls_warned = now
                self.log.warning(
                    "TLS handshake from %s on a plain-HTTP port (a client using https:// "
                    "with an http:// address?); answered 400%s", _peer(conn.sock),
                    f" (next such warning in {TLS_WARNING_INTERVAL:g}s at the earliest)")
        else:
            self.log.warning("Invalid request from %s: %s", _peer(conn.sock), verdict.reason)
        answer = error_message(verdict.value, self._settings.server_software).data
        self._table.close(conn, answer)

    def _fit_body(self, conn: ClientConnection, need: int) -> bool:
        """Make the socket's receive buffer hold the whole request, without reading any of
        it; False if the kernel does not allow a buffer that large."""
        if not need:  # chunked: its size is not known, its bound is
            need = self._max_peek + self._settings.body_buffer
        if need <= _DEFAULT_RCVBUF:
            return True
        sock = conn.sock
        try:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2 >= need:
                return True
            # Linux doubles what it is given (bookkeeping) and caps it at net.core.rmem_max.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2 * need)
            return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2 >= need
        except OSError:
            return False

    def _inspect(self, conn: ClientConnection) -> Verdict:
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
            return _NOTHING
        if n == len(buf):
            return READY  # more than the master waits for: the worker reads on
        allowed = conn.proxy_ok
        if allowed is None:  # accepted on the fast path, which reads no peer address
            allowed = conn.proxy_ok = self._peer_allowed(conn)
        if conn.prefix:
            data = conn.prefix + (bytes(buf[:n]) if n > 0 else b"")
            return classify(data, len(data), self._rules, allowed)
        return classify(buf, n, self._rules, allowed)

    def _peer_allowed(self, conn: ClientConnection) -> bool:
        """The peer may send a PROXY header (``proxy_allow_ips``)."""
        if self._settings.proxy_protocol == "off":
            return True  # not asked
        try:
            return self._settings.proxy_allow.allows(conn.sock.getpeername())
        except OSError:
            return False

    def _room_for_one_more(self) -> bool:
        """True if one more connection may be accepted (maybe by evicting one: see
        :meth:`_make_room`, called once a connection was actually accepted)."""
        table = self._table
        settings = self._settings
        if len(table.queue) >= settings.max_queue:
            return False
        if len(table.queue) + len(table.watched) < settings.max_connections:
            return True
        return self._evictable() is not None

    def _evictable(self) -> ClientConnection | None:
        """Who makes room at max_connections: the oldest connection still sending its head,
        then the longest idle parked one, then the oldest still sending a small body."""
        table = self._table
        for timer in (table.new, table.started, table.idle, table.body):
            oldest = timer.oldest()
            if oldest is not None:
                return oldest
        return None

    def _make_room(self) -> None:
        table = self._table
        if len(table.queue) + len(table.watched) < self._settings.max_connections:
            return
        oldest = self._evictable()
        if oldest is None:
            return
        self._stats["evicted"] += 1
        if oldest.state is _PARKED_IDLE:
            table.close(oldest)
        else:
            self._time_out(oldest)  # 408 if it had begun a request

    def _out_of_fds_now(self, exc: OSError) -> None:
        if not self._out_of_fds:
            self._out_of_fds = True
            self.log.error("accept() failed: %s; pausing accepts (retrying every %.1fs "
                           "until fds are free)", exc.strerror, ACCEPT_BACKOFF)
        self.paused_until = self._clock() + ACCEPT_BACKOFF
        self._table.alarm.set(self.paused_until)
        self._pause_accepting()

    def _fds_again(self) -> None:
        self._out_of_fds = False
        self.log.warning("accept() works again")

    def _pause_accepting(self) -> None:
        if self._accepting:
            self._accepting = False
            self._unregister_listeners()

    def _register_listeners(self) -> None:
        if self._accepting and not self._listener_fds:
            for listener in self._listeners:
                fd = listener.fileno()
                self._loop.watch(fd, select.EPOLLIN, self.on_listener,
                                 (listener, fd, listener.family))
                self._listener_fds.append(fd)

    def _unregister_listeners(self) -> None:
        fds, self._listener_fds = self._listener_fds, []
        for fd in fds:
            self._loop.unwatch_closed(fd)


def _peer(sock: socket.socket) -> object:
    """The client's address, for a log line."""
    try:
        return sock.getpeername()
    except OSError:
        return "?"
