"""The master's dispatcher: accept, wait for a request head, queue, hand off, park.

It runs in the Gunicorn master's main thread (see :mod:`~gunicorn_fdpass.master` for how it is
driven), so forking a worker never races a dispatcher thread. Every socket is non-blocking;
the only blocking call is ``epoll.poll``, whose timeout the caller chooses.

Life of a client connection in the master::

    accept --> watched (until its request head is complete) --> queued --> handed to a worker
                  ^                                                            |
                  '------------- parked (idle keep-alive, watched) <-- Park ---'

Ownership: a client socket is in exactly one place at a time -- watched (new or parked,
waiting for bytes), the queue, or a worker link's ``untaken`` map (the master keeps its copy
until the worker confirms with ``Taken``, so a worker that dies first loses nothing). After
``Taken`` it belongs to the worker.

Handoffs travel in each worker's inbox, a socketpair of their own whose receiving end the
master keeps open too: a handoff still unread there can be taken back (the kernel gives each
datagram to exactly one reader, so the worker and the master never both get it). That is how a
reserve (a connection queued at a busy worker, see :mod:`~gunicorn_fdpass.scheduler`) moves to
a worker that became free first, and how a draining or dead worker's unread handoffs return.

A connection reaches a worker only once its whole request head has arrived, so silent and
slow clients never occupy a worker; the master times them out itself.
"""

from __future__ import annotations

import errno
import itertools
import os
import select
import socket
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

from ..errors import PeerGone, ProtocolError
from ..http.head import END_OF_HEAD, head_complete
from ..http.serialize import ErrorMessage, error_message
from ..link import messages
from ..link.board import WaitingBoard
from ..link.channel import Channel, Received, socket_from_fd
from .scheduler import Scheduler

#: Connections accepted from one listener per readiness event, so a flood on one listener
#: cannot starve the channels and other listeners.
ACCEPT_BATCH: Final = 64

#: How often a connection may come back refused (its fd lost in transit) before the master
#: answers it 503 itself instead of trying yet another worker.
MAX_REFUSALS: Final = 3

#: Most bytes the master peeks at while waiting for a head (its one peek buffer). Gunicorn's
#: default limits allow heads of about 800 KiB; a head longer than this without its end is
#: handed over anyway and the worker reads (or refuses) the rest, so unlimited request limits
#: cannot make the master allocate hundreds of megabytes.
MAX_PEEK: Final = 1024 * 1024

#: Pause before accepting again after the master ran out of fds (EMFILE and friends).
ACCEPT_BACKOFF: Final = 0.5

#: Reserves per single-slot worker. Such a worker reads its inbox only when it is free, so a
#: reserve stays unread, and can be taken back, until then. A threaded worker passes what it
#: reads to its pool at once, so it gets none.
RESERVE: Final = 1

#: A reserve waiting longer than this is taken back for a worker that has a free slot even
#: while other connections are queued (with none queued it is taken back at once): a
#: connection does not sit behind a slow request for longer than this while others are served.
RESERVE_PATIENCE: Final = 0.005

_RESOURCE_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_PEEK: Final = socket.MSG_PEEK | socket.MSG_DONTWAIT
_WATCH_EVENTS: Final = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET
_TLS_HANDSHAKE: Final = 0x16
#: The client closed its side or the connection failed: a head in progress cannot complete.
_HUNG_UP: Final = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR


@dataclass(frozen=True, slots=True)
class DispatchSettings:
    """What the dispatcher needs from the configuration."""

    #: Seconds a parked keep-alive connection may stay idle; 0 disables parking.
    keepalive: float
    #: Seconds for a request head to arrive completely.
    head_timeout: float
    #: Connections waiting for a worker before the master stops accepting (back-pressure).
    max_queue: int
    #: Connections the master holds at most (watched + queued); past it the oldest idle
    #: parked connection is closed, or accepting pauses.
    max_connections: int
    #: Shed (answer 503) a request that would queue behind this many; 0: never.
    shed_queue: int = 0
    #: Shed a request that waited this long for a worker; 0: never.
    shed_wait: float = 0.0
    #: ``Retry-After`` seconds of a 503.
    retry_after: int = 1
    #: A head this long without its end is handed over anyway: the worker reads on, or
    #: answers 431. Capped at MAX_PEEK.
    max_head: int = 64 * 1024
    #: The listeners speak TLS: a connection is ready once its first TLS record arrived.
    tls: bool = False
    #: ``Server`` header of the master's own answers (408, 503), as on every response.
    server_software: str = ""


class _Verdict(Enum):
    READY = 1  # a whole request head (or enough bytes for the worker to refuse it)
    WAIT = 2  # nothing yet
    STARTED = 3  # a head in progress
    GONE = 4  # the client hung up or the socket failed


class ClientConnection:
    """The master's record of one client connection while the master holds it."""

    __slots__ = ("conn_id", "prefix", "refusals", "since", "sock", "timer")

    def __init__(self, conn_id: int, sock: socket.socket, prefix: bytes = b"") -> None:
        self.conn_id = conn_id
        self.sock = sock
        self.prefix = prefix
        self.refusals = 0
        self.since = 0.0  # when it entered its current timer or the queue
        self.timer: _Timeouts | None = None

    def close(self) -> None:
        self.sock.close()


class _Timeouts:
    """Connections that all share one timeout, oldest first (O(1) add, remove, expire)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._conns: OrderedDict[int, ClientConnection] = OrderedDict()

    def add(self, conn: ClientConnection, now: float) -> None:
        conn.since = now
        conn.timer = self
        self._conns[conn.conn_id] = conn

    def remove(self, conn: ClientConnection) -> None:
        del self._conns[conn.conn_id]
        conn.timer = None

    def oldest(self) -> ClientConnection | None:
        return next(iter(self._conns.values()), None)

    def next_deadline(self) -> float | None:
        oldest = self.oldest()
        return None if oldest is None else oldest.since + self.timeout

    def pop_expired(self, now: float) -> Iterator[ClientConnection]:
        """Remove and yield the connections whose time is up, oldest first.

        Looks at no more than those plus one: this runs on every poll, and thousands of
        parked connections may be waiting here.
        """
        conns = self._conns
        while conns:
            conn = next(iter(conns.values()))
            if conn.since + self.timeout > now:
                return
            del conns[conn.conn_id]
            conn.timer = None
            yield conn

    def __len__(self) -> int:
        return len(self._conns)

    def __iter__(self) -> Iterator[ClientConnection]:
        return iter(list(self._conns.values()))


@dataclass(frozen=True, slots=True)
class WorkerEnds:
    """What a worker keeps of its links to the master: the two-way ``channel`` and the
    ``inbox`` its handoffs arrive in, and the ``board`` that says whether work waits."""

    channel: Channel
    inbox: Channel
    #: How much work waits for a worker (shared by the master and every worker).
    board: WaitingBoard


class WorkerLink:
    """The master's side of one worker: its channel, its inbox (both ends: ``handoffs`` to
    send, ``unread`` to take back what the worker has not read yet) and the handoffs it has
    not confirmed."""

    __slots__ = ("channel", "handoffs", "pid", "unread", "untaken")

    def __init__(self, channel: Channel, handoffs: Channel, unread: Channel) -> None:
        self.channel = channel
        self.handoffs = handoffs
        self.unread = unread
        self.pid = 0
        self.untaken: dict[int, ClientConnection] = {}

    def close(self) -> None:
        for channel in (self.channel, self.handoffs, self.unread):
            channel.close()

    def __repr__(self) -> str:
        return f"<WorkerLink pid={self.pid or '?'}>"


#: An event handler: called with the object it was registered for and the epoll event mask.
Handler = Callable[[Any, int], None]


class Dispatcher:
    """Owns the accept side of the listeners, every worker channel, and client sockets."""

    def __init__(self, log: Any, settings: DispatchSettings) -> None:
        self.log = log
        self.owner_pid = os.getpid()
        self._epoll = select.epoll()
        self._handlers: dict[int, tuple[Handler, Any]] = {}
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._watch_fd(self._wake_r, select.EPOLLIN, self._on_wake, None)
        self._scheduler: Scheduler[WorkerLink] = Scheduler()
        self.board = WaitingBoard()
        self._links: list[WorkerLink] = []
        self._pending: list[tuple[WorkerLink, WorkerEnds]] = []
        self._queue: deque[ClientConnection] = deque()
        self._watched: dict[int, ClientConnection] = {}  # fd -> connection waiting for bytes
        self._new = _Timeouts(settings.head_timeout)  # accepted, head not complete yet
        self._idle = _Timeouts(settings.keepalive)  # parked, nothing sent since
        self._started = _Timeouts(settings.head_timeout)  # parked, next head under way
        self._listeners: list[socket.socket] = []
        self._listener_fds: list[int] = []  # registered in epoll right now
        self._accepting = True
        self._accept_paused_until = 0.0
        self._out_of_fds = False
        self._shutting_down = False
        self._ids = itertools.count(1)
        self._peek_buf = bytearray(0)  # sized by the settings setter
        self.settings = settings
        self.stats = {"accepted": 0, "dispatched": 0, "requeued": 0, "refused": 0, "shed": 0,
                      "timed_out": 0, "evicted": 0}
        self._wait_total = 0.0  # seconds queued, summed over dispatched connections
        self._wait_max = 0.0

    # -- what the master glue calls ------------------------------------------------------

    @property
    def settings(self) -> DispatchSettings:
        return self._settings

    @settings.setter
    def settings(self, value: DispatchSettings) -> None:
        self._settings = value
        self._new.timeout = self._started.timeout = value.head_timeout
        self._idle.timeout = value.keepalive
        self._max_peek = min(value.max_head, MAX_PEEK)
        if len(self._peek_buf) != self._max_peek + 1:
            self._peek_buf = bytearray(self._max_peek + 1)

    @property
    def wakeup_fd(self) -> int:
        """Write end of the self-pipe; any byte written wakes :meth:`poll` up."""
        return self._wake_w

    def wake(self) -> None:
        """Interrupt a :meth:`poll` in progress (safe from signal handlers and threads)."""
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # the pipe is full, so a wakeup is pending anyway

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

    def open_channel(self) -> WorkerEnds:
        """Make the channel and inbox of a worker about to be forked; return the worker's ends.

        The master's ends are adopted right after the fork (:meth:`after_fork_in_parent`).
        """
        master_end, worker_end = Channel.pair()
        handoffs, inbox = Channel.pair()
        master_end.set_blocking(False)
        handoffs.set_blocking(False)
        self._pending.append((WorkerLink(master_end, handoffs, inbox),
                              WorkerEnds(worker_end, inbox, self.board)))
        return self._pending[-1][1]

    def after_fork_in_parent(self) -> None:
        """Close the worker's channel end; keep its inbox end; watch the master's end."""
        pending, self._pending = self._pending, []
        for link, ends in pending:
            # The inbox end stays open here (it is ``link.unread``); the channel end must
            # not, or the master would never see the channel hang up when the worker dies.
            ends.channel.close()
            self._links.append(link)
            self._watch_fd(link.channel.fileno(), select.EPOLLIN, self._on_channel, link)
            if self._shutting_down:
                self._tell(link, messages.Closing())

    def after_fork_in_child(self) -> WorkerEnds | None:
        """In a freshly forked child: close every fd the master owns.

        Returns the worker ends of the newest pending link (the child's own, when the child is
        a worker: Gunicorn forks right after creating the worker object), or None.
        """
        keep = self._pending[-1][1] if self._pending else None
        for link, ends in self._pending:
            link.channel.close()
            link.handoffs.close()  # the inbox end itself is also ``ends.inbox``: see below
            if ends is not keep:
                ends.channel.close()
                ends.inbox.close()
        self._pending = []
        # No epoll_ctl here: the epoll instance is shared with the master, so unregistering
        # would blind the master. Closing our copies of the fds leaves its set untouched.
        self._close_connections(unregister=False)
        for link in self._links:
            link.close()
        self._links = []
        self._listeners = []
        self._handlers.clear()
        self._epoll.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        self.owner_pid = -1
        return keep

    def poll(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for events, handle them, dispatch queued work."""
        now = time.monotonic()
        if self._accept_paused_until and now >= self._accept_paused_until:
            self._accept_paused_until = 0.0
        self._maybe_resume_accepting()
        deadline = self._next_deadline()
        if deadline is not None:
            timeout = min(timeout, deadline - now)
        if self._queue and self._scheduler.free_slots():
            timeout = 0.01  # a handoff found a full channel buffer: retry shortly
        try:
            events = self._epoll.poll(max(0.0, timeout))
        except InterruptedError:
            events = []
        handlers = self._handlers
        for fd, mask in events:
            entry = handlers.get(fd)
            if entry is not None:  # else unregistered by an earlier event of this batch
                entry[0](entry[1], mask)
        now = time.monotonic()
        self._expire(now)
        self._dispatch(now)
        self.board.publish(len(self._queue) + self._scheduler.reserves_held())

    def begin_shutdown(self) -> None:
        """Graceful stop: accept nothing more; serve what is queued or in a worker.

        Workers are told to end each connection after its current response. Idle
        connections stay watched meanwhile, so that a request already on its way on one
        is still served rather than cut off; :meth:`close` ends the idle rest.
        """
        if self._shutting_down:
            return
        self._shutting_down = True
        self._pause_accepting()
        for link in self._links:
            self._tell(link, messages.Closing())

    def drained(self) -> bool:
        """True once nothing is queued, in a worker, or half-received."""
        if self._queue or any(self._scheduler.busy(link) for link in self._links):
            return False
        return not any(self._has_bytes(conn) for conn in self._watched.values())

    def close(self) -> None:
        """Close everything the dispatcher owns (master shutdown)."""
        self._close_connections(unregister=True)
        for link in self._links:
            link.close()
        self._links = []
        self._unregister_listeners()
        self._listeners = []

    def counts(self) -> dict[str, float]:
        """Live numbers: connections by state, busy slots, totals so far, queue wait."""
        dispatched = self.stats["dispatched"]
        return {
            "queued": len(self._queue),
            "parked": len(self._idle) + len(self._started),
            "waiting_for_head": len(self._new),
            "workers": len(self._scheduler),
            "busy": sum(self._scheduler.busy(link) for link in self._links),
            "queue_wait_avg_ms": 1000.0 * self._wait_total / dispatched if dispatched else 0.0,
            "queue_wait_max_ms": 1000.0 * self._wait_max,
            **self.stats,
        }

    def busy_by_worker(self) -> dict[int, int]:
        """Busy slots per worker pid."""
        return {link.pid: self._scheduler.busy(link) for link in self._links if link.pid}

    # -- events --------------------------------------------------------------------------

    def _on_wake(self, _: None, __: int) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _on_listener(self, listener: socket.socket, _: int) -> None:
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
                if exc.errno in _RESOURCE_ERRNOS:
                    if not self._out_of_fds:
                        self._out_of_fds = True
                        self.log.error("accept() failed: %s; pausing accepts (retrying every "
                                       "%.1fs until fds are free)", exc.strerror, ACCEPT_BACKOFF)
                    self._pause_accepting(ACCEPT_BACKOFF)
                    return
                raise
            if self._out_of_fds:
                self._out_of_fds = False
                self.log.warning("accept() works again")
            self.stats["accepted"] += 1
            conn = ClientConnection(next(self._ids), sock)
            verdict = self._inspect(conn)  # the request is often there already
            if verdict is _Verdict.READY:
                self._enqueue(conn, time.monotonic())
            elif verdict is not _Verdict.GONE:
                self._watch(conn, self._new)
            else:
                conn.close()

    def _on_client(self, conn: ClientConnection, events: int) -> None:
        verdict = self._inspect(conn)
        if verdict is _Verdict.GONE or (verdict is not _Verdict.READY and events & _HUNG_UP):
            # A peek keeps returning the unread partial head, so it cannot see that the
            # client closed or reset meanwhile; epoll's hang-up flags can.
            self._drop(conn)
        elif verdict is _Verdict.READY:
            self._unwatch(conn)
            self._enqueue(conn, time.monotonic())
        elif verdict is _Verdict.STARTED and conn.timer is self._idle:
            # The next request has begun: from now on it has head_timeout to complete.
            self._idle.remove(conn)
            self._started.add(conn, time.monotonic())

    def _on_channel(self, link: WorkerLink, _: int) -> None:
        while True:
            try:
                received = link.channel.recv()
            except PeerGone:
                self._worker_gone(link)
                return
            except ProtocolError as exc:
                self.log.error("worker %s sent a bad message (%s); dropping its channel",
                               link.pid, exc)
                self._worker_gone(link)
                return
            if received is None:
                return
            self._on_message(link, received)

    def _on_message(self, link: WorkerLink, received: Received) -> None:
        message = received.message
        if isinstance(message, messages.Taken):
            conn = link.untaken.pop(message.conn_id, None)
            if conn is not None:
                conn.close()  # the worker holds the connection now
        elif isinstance(message, messages.Done):
            self._scheduler.release(link)
        elif isinstance(message, messages.Park):
            self._scheduler.release(link)
            if received.fd is None:
                self.log.error("a parked connection from worker %s arrived without its fd "
                               "(master out of fds?); the client is disconnected", link.pid)
                return
            sock = socket_from_fd(received.fd, message.family)
            self._park(ClientConnection(message.conn_id, sock, message.leftover))
        elif isinstance(message, messages.Refused):
            conn = link.untaken.pop(message.conn_id, None)
            self._scheduler.release(link)
            if conn is not None:
                self._refused(conn, link)
        elif isinstance(message, messages.Hello):
            link.pid = message.pid
            self._scheduler.add(link, message.capacity,
                                RESERVE if message.capacity == 1 else 0)
        elif isinstance(message, messages.Draining):
            self._scheduler.drain(link)
            self._take_back(link)  # it will read no more: others serve them now
        else:  # Handoff and Closing: only the master sends those
            if received.fd is not None:
                os.close(received.fd)
            self.log.error("worker %s sent an unexpected %s", link.pid, type(message).__name__)

    # -- connections ---------------------------------------------------------------------

    def _inspect(self, conn: ClientConnection) -> _Verdict:
        """Look at what the client sent so far, without consuming it."""
        buf = self._peek_buf
        try:
            n = conn.sock.recv_into(buf, len(buf), _PEEK)
        except BlockingIOError:
            n = -1
        except OSError:
            return _Verdict.GONE
        if n == 0:
            return _Verdict.GONE  # end of file: the client hung up
        if n < 0 and not conn.prefix:
            return _Verdict.WAIT
        if self._settings.tls:
            return _Verdict.READY if _tls_record_complete(buf, n) else _Verdict.STARTED
        if conn.prefix:
            data = conn.prefix + (bytes(buf[:n]) if n > 0 else b"")
            done = head_complete(data) or len(data) > self._max_peek
        else:
            done = n > self._max_peek or END_OF_HEAD.search(buf, 0, n) is not None
        return _Verdict.READY if done else _Verdict.STARTED

    def _has_bytes(self, conn: ClientConnection) -> bool:
        if conn.prefix:
            return True
        try:
            return bool(conn.sock.recv(1, _PEEK))
        except OSError:
            return False

    def _watch(self, conn: ClientConnection, timer: _Timeouts) -> None:
        fd = conn.sock.fileno()
        self._watched[fd] = conn
        timer.add(conn, time.monotonic())
        self._watch_fd(fd, _WATCH_EVENTS, self._on_client, conn)

    def _unwatch(self, conn: ClientConnection) -> None:
        fd = conn.sock.fileno()
        del self._watched[fd]
        del self._handlers[fd]
        self._epoll.unregister(fd)
        if conn.timer is not None:
            conn.timer.remove(conn)

    def _drop(self, conn: ClientConnection) -> None:
        self._unwatch(conn)
        conn.close()

    def _enqueue(self, conn: ClientConnection, now: float) -> None:
        shed_at = self._settings.shed_queue
        if shed_at and len(self._queue) >= shed_at:
            self._shed(conn, f"{len(self._queue)} requests already queued")
            return
        conn.since = now
        self._queue.append(conn)

    def _park(self, conn: ClientConnection) -> None:
        if self._settings.keepalive <= 0:
            conn.close()
        elif head_complete(conn.prefix):
            # A pipelined request the worker left unserved (its burst was used up): it needs
            # no more data, so it waits in the queue, not for the socket to become readable.
            self._enqueue(conn, time.monotonic())
        else:
            self._watch(conn, self._started if conn.prefix else self._idle)

    def _expire(self, now: float) -> None:
        for conn in self._idle.pop_expired(now):
            self._drop(conn)
        for timer in (self._new, self._started):
            for conn in timer.pop_expired(now):
                self.stats["timed_out"] += 1
                started = self._has_bytes(conn)
                self._unwatch(conn)
                if started:  # tell the client why it is cut off
                    _answer_and_close(conn, error_message(408, self._settings.server_software))
                else:
                    conn.close()
        wait = self._settings.shed_wait
        while wait and self._queue and self._queue[0].since + wait <= now:
            self._shed(self._queue.popleft(), f"waited {wait:g}s for a worker")

    def _dispatch(self, now: float) -> None:
        queue = self._queue
        if self._scheduler.free_slots():
            # A reserve waiting at a busy worker goes to a free one: at once if nothing else
            # waits, else once it waited RESERVE_PATIENCE (it is older than the queue).
            for holder in self._scheduler.overbooked():
                if holder.untaken and (not queue or now - min(
                        c.since for c in holder.untaken.values()) >= RESERVE_PATIENCE):
                    self._take_back(holder)
        while queue:
            link = self._scheduler.pick()
            if link is None:
                break
            conn = queue.popleft()
            try:
                sent = link.handoffs.send(
                    messages.Handoff(conn.conn_id, conn.prefix, conn.sock.family),
                    conn.sock.fileno())
            except PeerGone:
                queue.appendleft(conn)
                self._worker_gone(link)
                continue
            if not sent:
                # The worker's receive queue is full: it will read it soon; try later.
                self._scheduler.release(link)
                queue.appendleft(conn)
                break
            link.untaken[conn.conn_id] = conn
            self.stats["dispatched"] += 1
            waited = now - conn.since
            self._wait_total += waited
            self._wait_max = max(self._wait_max, waited)
            conn.since = now  # from now on: how long it waits unread in the inbox

    def _take_back(self, link: WorkerLink) -> int:
        """Take the handoffs ``link``'s worker has not read out of its inbox; queue them first.

        The master still has its copy of each (in ``untaken``), so the copy that comes back
        with the message is closed.
        """
        back: list[ClientConnection] = []
        while not link.unread.closed:
            try:
                received = link.unread.recv()
            except (PeerGone, ProtocolError):
                break
            if received is None:
                break
            if received.fd is not None:
                os.close(received.fd)
            message = received.message
            conn = (link.untaken.pop(message.conn_id, None)
                    if isinstance(message, messages.Handoff) else None)
            if conn is not None:
                self._scheduler.release(link)
                back.append(conn)
        self._requeue_first(back)
        return len(back)

    def _requeue_first(self, conns: list[ClientConnection]) -> None:
        """Put connections that were handed out but not served back at the head of the queue,
        in their order: they are the oldest work."""
        self._queue.extendleft(reversed(conns))
        self.stats["requeued"] += len(conns)

    def _refused(self, conn: ClientConnection, link: WorkerLink) -> None:
        conn.refusals += 1
        self.stats["refused"] += 1
        if conn.refusals < MAX_REFUSALS:
            self.log.warning("worker %s could not receive a connection (out of fds?); "
                             "handing it to another worker", link.pid)
            self._queue.appendleft(conn)
            return
        self.log.error("connection refused by workers %d times; answering 503", conn.refusals)
        self._shed(conn, "no worker could receive it", count=False)

    def _shed(self, conn: ClientConnection, why: str, count: bool = True) -> None:
        if count:
            self.stats["shed"] += 1
            self.log.warning("load shedding: 503 for a request (%s)", why)
        retry = (("Retry-After", str(self._settings.retry_after)),)
        _answer_and_close(conn, error_message(503, self._settings.server_software,
                                              extra_headers=retry))

    def _worker_gone(self, link: WorkerLink) -> None:
        if link.channel.closed:
            return
        fd = link.channel.fileno()
        self._epoll.unregister(fd)
        del self._handlers[fd]
        # Unread handoffs come out of its inbox (closing the fds in flight there); the ones it
        # read but never confirmed were not served either: all go to the head of the queue.
        back = self._take_back(link)
        link.close()
        self._scheduler.remove(link)
        self._links.remove(link)
        untaken = list(link.untaken.values())
        link.untaken.clear()
        self._requeue_first(untaken)
        if back or untaken:
            self.log.info("worker %s left; %d connection(s) it had not taken go to others",
                          link.pid, back + len(untaken))

    def _tell(self, link: WorkerLink, message: messages.Message) -> None:
        try:
            link.channel.send(message)
        except PeerGone:
            self._worker_gone(link)

    def _close_connections(self, *, unregister: bool) -> None:
        for fd in self._watched:
            self._handlers.pop(fd, None)
            if unregister:
                self._epoll.unregister(fd)
        for conn in itertools.chain(self._queue, self._watched.values(),
                                    *(link.untaken.values() for link in self._links)):
            conn.close()
        self._queue.clear()
        self._watched.clear()
        for timer in (self._new, self._idle, self._started):
            for conn in timer:
                timer.remove(conn)
        for link in self._links:
            link.untaken.clear()

    # -- accepting -----------------------------------------------------------------------

    def _room_for_one_more(self) -> bool:
        if len(self._queue) >= self._settings.max_queue:
            return False
        if len(self._queue) + len(self._watched) < self._settings.max_connections:
            return True
        oldest_idle = self._idle.oldest()
        if oldest_idle is None:
            return False
        self.stats["evicted"] += 1  # worker_connections reached: the longest idle one goes
        self._drop(oldest_idle)
        return True

    def _next_deadline(self) -> float | None:
        deadlines = [d for d in (self._new.next_deadline(), self._idle.next_deadline(),
                                 self._started.next_deadline()) if d is not None]
        if self._settings.shed_wait and self._queue:
            deadlines.append(self._queue[0].since + self._settings.shed_wait)
        if self._accept_paused_until:
            deadlines.append(self._accept_paused_until)
        return min(deadlines, default=None)

    def _pause_accepting(self, seconds: float = 0.0) -> None:
        if seconds:
            self._accept_paused_until = time.monotonic() + seconds
        if self._accepting:
            self._accepting = False
            self._unregister_listeners()

    def _maybe_resume_accepting(self) -> None:
        if (not self._accepting and not self._accept_paused_until and not self._shutting_down
                and len(self._queue) < self._settings.max_queue
                and len(self._queue) + len(self._watched) < self._settings.max_connections):
            self._accepting = True
            self._register_listeners()

    def _register_listeners(self) -> None:
        if self._accepting and not self._listener_fds:
            for listener in self._listeners:
                fd = listener.fileno()
                self._watch_fd(fd, select.EPOLLIN, self._on_listener, listener)
                self._listener_fds.append(fd)

    def _unregister_listeners(self) -> None:
        fds, self._listener_fds = self._listener_fds, []
        for fd in fds:
            del self._handlers[fd]
            try:
                self._epoll.unregister(fd)
            except OSError:
                pass  # already closed by Gunicorn: the kernel dropped it

    def _watch_fd(self, fd: int, events: int, handler: Handler, obj: Any) -> None:
        self._epoll.register(fd, events)
        self._handlers[fd] = (handler, obj)


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


def _answer_and_close(conn: ClientConnection, answer: ErrorMessage) -> None:
    """Answer from the master itself (408, 503) and close, without ever blocking."""
    sock = conn.sock
    try:
        # Consume what the client sent: closing with unread bytes would send a reset that
        # can destroy the answer before the client reads it.
        while sock.recv(65536, socket.MSG_DONTWAIT):
            pass
    except OSError:
        pass
    try:
        sock.send(answer.data, socket.MSG_DONTWAIT)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    conn.close()
