"""The master's dispatcher: accept, queue, hand off to a free worker, park idle connections.

It runs in the Gunicorn master's main thread (see :mod:`~gunicorn_fdpass.master` for how it is
driven), so forking a worker never races a dispatcher thread. All sockets are non-blocking;
the only blocking call is the selector's ``select``, whose timeout the caller chooses.

Ownership: a client socket belongs to exactly one place at a time -- the queue, a worker link's
``untaken`` map (the master keeps its copy until the worker confirms with ``Taken``, so a worker
that dies first loses nothing), a worker (after ``Taken``), or the parked set.
"""

from __future__ import annotations

import errno
import itertools
import os
import selectors
import socket
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from . import protocol
from .channel import Channel, Received
from .errors import PeerGone, ProtocolError
from .head import head_complete
from .scheduler import Scheduler

#: Connections accepted from one listener per readiness event, so a flood on one listener
#: cannot starve the channels and other listeners.
ACCEPT_BATCH: Final = 64

#: How often a connection may come back refused (its fd lost in transit) before the master
#: answers it 503 itself instead of trying yet another worker.
MAX_REFUSALS: Final = 3

#: Pause before accepting again after the master ran out of fds (EMFILE and friends).
ACCEPT_BACKOFF: Final = 0.5

_RESOURCE_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

_SERVICE_UNAVAILABLE: Final = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n"
    b"Retry-After: 1\r\n\r\n"
)


@dataclass(frozen=True, slots=True)
class DispatchSettings:
    """What the dispatcher needs from the configuration."""

    #: Seconds a parked keep-alive connection may stay idle; 0 disables parking.
    keepalive: float
    #: Connections waiting for a worker before the master stops accepting (back-pressure).
    max_queue: int


class ClientConnection:
    """The master's record of one client connection while the master holds it."""

    __slots__ = ("conn_id", "prefix", "refusals", "since", "sock")

    def __init__(self, conn_id: int, sock: socket.socket, prefix: bytes = b"") -> None:
        self.conn_id = conn_id
        self.sock = sock
        self.prefix = prefix
        self.refusals = 0
        self.since = time.monotonic()

    def close(self) -> None:
        self.sock.close()


class WorkerLink:
    """The master's side of one worker: its channel and the handoffs it has not confirmed."""

    __slots__ = ("channel", "pid", "untaken")

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.pid = 0
        self.untaken: dict[int, ClientConnection] = {}

    def __repr__(self) -> str:
        return f"<WorkerLink pid={self.pid or '?'}>"


class Dispatcher:
    """Owns the master's listeners' accept side, every worker channel, and client sockets."""

    def __init__(self, log: Any, settings: DispatchSettings) -> None:
        self.log = log
        self.settings = settings
        self.owner_pid = os.getpid()
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector.register(self._wake_r, selectors.EVENT_READ, (self._on_wake, None))
        self._scheduler: Scheduler[WorkerLink] = Scheduler()
        self._links: list[WorkerLink] = []
        self._pending: list[tuple[Channel, Channel]] = []
        self._queue: deque[ClientConnection] = deque()
        self._parked: dict[int, ClientConnection] = {}
        self._listeners: list[socket.socket] = []
        self._accepting = True
        self._accept_paused_until = 0.0
        self._ids = itertools.count(1)
        self.stats = {"accepted": 0, "dispatched": 0, "requeued": 0, "refused": 0}

    # -- what the master glue calls ------------------------------------------------------

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

    def open_channel(self) -> Channel:
        """Make the channel of a worker about to be forked; return the worker's end.

        The master's end is adopted right after the fork (:meth:`after_fork_in_parent`).
        """
        master_end, worker_end = Channel.pair()
        master_end.set_blocking(False)
        self._pending.append((master_end, worker_end))
        return worker_end

    def after_fork_in_parent(self) -> None:
        """Close the worker ends the master no longer needs; start watching the master ends."""
        pending, self._pending = self._pending, []
        for master_end, worker_end in pending:
            worker_end.close()
            link = WorkerLink(master_end)
            self._links.append(link)
            self._selector.register(master_end.fileno(), selectors.EVENT_READ,
                                    (self._on_channel, link))

    def after_fork_in_child(self) -> Channel | None:
        """In a freshly forked child: close every fd the master owns.

        Returns the worker end of the newest pending channel (the child's own, when the child
        is a worker: Gunicorn forks right after creating the worker object), or None.
        """
        keep = self._pending[-1][1] if self._pending else None
        for master_end, worker_end in self._pending:
            master_end.close()
            if worker_end is not keep:
                worker_end.close()
        self._pending = []
        for link in self._links:
            link.channel.close()
            for conn in link.untaken.values():
                conn.close()
        self._links = []
        for conn in itertools.chain(self._queue, self._parked.values()):
            conn.close()
        self._queue.clear()
        self._parked.clear()
        self._listeners = []
        self._selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        self.owner_pid = -1
        return keep

    def poll(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for events, handle them, dispatch queued work."""
        now = time.monotonic()
        if not self._accepting and self._accept_paused_until and now >= self._accept_paused_until:
            self._accept_paused_until = 0.0
            self._maybe_resume_accepting()
        timeout = min(timeout, self._next_deadline(now) - now)
        if self._queue and self._scheduler.free_slots():
            timeout = 0.01  # a handoff found a full channel buffer: retry shortly
        for key, _ in self._selector.select(max(0.0, timeout)):
            handler, obj = key.data
            handler(obj)
        self._expire_parked(time.monotonic())
        self._dispatch()

    def close(self) -> None:
        """Close everything the dispatcher owns (master shutdown)."""
        for conn in itertools.chain(self._queue, self._parked.values()):
            conn.close()
        self._queue.clear()
        self._parked.clear()
        for link in self._links:
            link.channel.close()
        self._links = []
        self._unregister_listeners()
        self._listeners = []

    def counts(self) -> dict[str, int]:
        """Live numbers: queued, parked, workers and their busy slots, totals so far."""
        return {
            "queued": len(self._queue),
            "parked": len(self._parked),
            "workers": len(self._scheduler),
            "busy": sum(self._scheduler.busy(link) for link in self._links),
            **self.stats,
        }

    # -- events --------------------------------------------------------------------------

    def _on_wake(self, _: None) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _on_listener(self, listener: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            if len(self._queue) >= self.settings.max_queue:
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
                    self.log.error("accept() failed: %s; pausing accepts for %.1fs",
                                   exc.strerror, ACCEPT_BACKOFF)
                    self._pause_accepting(ACCEPT_BACKOFF)
                    return
                raise
            self.stats["accepted"] += 1
            self._queue.append(ClientConnection(next(self._ids), sock))

    def _on_channel(self, link: WorkerLink) -> None:
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
        if isinstance(message, protocol.Taken):
            conn = link.untaken.pop(message.conn_id, None)
            if conn is not None:
                conn.close()  # the worker holds the connection now
        elif isinstance(message, protocol.Done):
            self._scheduler.release(link)
        elif isinstance(message, protocol.Park):
            self._scheduler.release(link)
            if received.fd is None:
                self.log.error("a parked connection from worker %s arrived without its fd "
                               "(master out of fds?); the client is disconnected", link.pid)
                return
            sock = socket.socket(fileno=received.fd)
            self._park(ClientConnection(message.conn_id, sock, message.leftover))
        elif isinstance(message, protocol.Refused):
            conn = link.untaken.pop(message.conn_id, None)
            self._scheduler.release(link)
            if conn is not None:
                self._refused(conn, link)
        elif isinstance(message, protocol.Hello):
            link.pid = message.pid
            self._scheduler.add(link, message.capacity)
        elif isinstance(message, protocol.Draining):
            self._scheduler.drain(link)
        else:  # a Handoff: only the master sends those
            if received.fd is not None:
                os.close(received.fd)
            self.log.error("worker %s sent an unexpected %s", link.pid, type(message).__name__)

    def _on_parked(self, conn: ClientConnection) -> None:
        self._unpark(conn)
        try:
            peeked = conn.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            self._park(conn)  # spurious wakeup
            return
        except OSError:
            peeked = b""
        if not peeked:
            conn.close()  # the client hung up while idle
            return
        self._queue.append(conn)

    # -- helpers -------------------------------------------------------------------------

    def _dispatch(self) -> None:
        while self._queue:
            link = self._scheduler.pick()
            if link is None:
                break
            conn = self._queue.popleft()
            try:
                sent = link.channel.send(protocol.Handoff(conn.conn_id, conn.prefix),
                                         conn.sock.fileno())
            except PeerGone:
                self._queue.appendleft(conn)
                self._worker_gone(link)
                continue
            if not sent:
                # The worker's receive queue is full: it will read it soon; try later.
                self._scheduler.release(link)
                self._queue.appendleft(conn)
                break
            link.untaken[conn.conn_id] = conn
            self.stats["dispatched"] += 1
        self._maybe_resume_accepting()

    def _refused(self, conn: ClientConnection, link: WorkerLink) -> None:
        conn.refusals += 1
        self.stats["refused"] += 1
        if conn.refusals < MAX_REFUSALS:
            self.log.warning("worker %s could not receive a connection (out of fds?); "
                             "handing it to another worker", link.pid)
            self._queue.appendleft(conn)
            return
        self.log.error("connection refused by workers %d times; answering 503", conn.refusals)
        try:
            conn.sock.send(_SERVICE_UNAVAILABLE, socket.MSG_DONTWAIT)
        except OSError:
            pass
        conn.close()

    def _worker_gone(self, link: WorkerLink) -> None:
        if link.channel.closed:
            return
        self._selector.unregister(link.channel.fileno())
        link.channel.close()
        self._scheduler.remove(link)
        self._links.remove(link)
        untaken = list(link.untaken.values())
        link.untaken.clear()
        # They were the oldest work in flight: they go to the head of the queue.
        self._queue.extendleft(reversed(untaken))
        self.stats["requeued"] += len(untaken)
        if untaken:
            self.log.info("worker %s left; %d connection(s) it had not taken go to others",
                          link.pid, len(untaken))

    def _park(self, conn: ClientConnection) -> None:
        if self.settings.keepalive <= 0:
            conn.close()
            return
        if head_complete(conn.prefix):
            # A pipelined request the worker left unserved (its burst was used up): it needs
            # no more data, so it waits in the queue, not for the socket to become readable.
            self._queue.append(conn)
            return
        conn.since = time.monotonic()
        self._parked[conn.conn_id] = conn
        self._selector.register(conn.sock, selectors.EVENT_READ, (self._on_parked, conn))

    def _unpark(self, conn: ClientConnection) -> None:
        self._selector.unregister(conn.sock)
        del self._parked[conn.conn_id]

    def _expire_parked(self, now: float) -> None:
        limit = now - self.settings.keepalive
        while self._parked:
            conn = next(iter(self._parked.values()))
            if conn.since > limit:
                return
            self._unpark(conn)
            conn.close()

    def _next_deadline(self, now: float) -> float:
        deadline = now + 3600.0
        if self._parked:
            oldest = next(iter(self._parked.values()))
            deadline = min(deadline, oldest.since + self.settings.keepalive)
        if self._accept_paused_until:
            deadline = min(deadline, self._accept_paused_until)
        return deadline

    def _pause_accepting(self, seconds: float = 0.0) -> None:
        if seconds:
            self._accept_paused_until = time.monotonic() + seconds
        if self._accepting:
            self._accepting = False
            self._unregister_listeners()

    def _maybe_resume_accepting(self) -> None:
        if (not self._accepting and not self._accept_paused_until
                and len(self._queue) < self.settings.max_queue):
            self._accepting = True
            self._register_listeners()

    def _register_listeners(self) -> None:
        if self._accepting:
            for listener in self._listeners:
                self._selector.register(listener, selectors.EVENT_READ,
                                        (self._on_listener, listener))

    def _unregister_listeners(self) -> None:
        for listener in self._listeners:
            try:
                self._selector.unregister(listener)
            except (KeyError, ValueError):
                pass  # not registered (accepting paused) or already closed by Gunicorn

