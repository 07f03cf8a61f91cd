"""The one owner of the client connections in the master: their state and their place.

Every transition of :mod:`~gunicorn_fdpass.master.states` happens in a method here, together
with the move between the places that go with the states: epoll and a timer while the
connection waits for bytes, the queue, a worker link's ``handed_out`` map. So a connection's
state and the container holding it cannot disagree (:meth:`ConnectionTable.audit` checks
that in tests).
"""

from __future__ import annotations

import itertools
import select
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final

from .linger import Linger
from .loop import EventLoop, Handler
from .states import WATCHED_STATES, ClientConnection, ConnState, Event, advance
from .timers import Alarm, Timeouts

if TYPE_CHECKING:
    from .links import WorkerLink

# How a client fd is in the master's epoll (ClientConnection.polled). A connection waiting
# for its next request is armed for one event: when the request comes, the event disarms it,
# so handing it out needs no epoll_ctl, and parking it again is one EPOLL_CTL_MOD (not an
# ADD and a DEL per request). It stays in the epoll set, disarmed, while queued or handed
# out. One that must wait on (half a head) goes edge-triggered: re-arming a one-shot entry
# whose socket holds unread bytes would fire again at once, forever.
_UNPOLLED: Final = 0
_ARMED: Final = 1  # one-shot, armed: the next event disarms it
_DISARMED: Final = 2  # in the set, reports nothing until re-armed
_EDGE: Final = 3  # edge-triggered: every new arrival is reported
_ONESHOT_EVENTS: Final = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLONESHOT
_EDGE_EVENTS: Final = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET
_QUEUED: Final = ConnState.QUEUED
_HANDED_OUT: Final = ConnState.HANDED_OUT
# Module constants: an enum class attribute costs a lookup on every use.
_HEAD_PENDING: Final = Event.HEAD_PENDING
_HEAD_READY: Final = Event.HEAD_READY
_BODY_PENDING: Final = Event.BODY_PENDING
_PARKED: Final = Event.PARKED
_PARKED_PARTIAL: Final = Event.PARKED_PARTIAL
_NEXT_HEAD_BEGAN: Final = Event.NEXT_HEAD_BEGAN
_SENT: Final = Event.SENT
_TAKEN_BACK: Final = Event.TAKEN_BACK
_FINISHED: Final = Event.FINISHED
_DROPPED: Final = Event.DROPPED


def _no_handler(_: Any, __: int) -> None:
    raise RuntimeError("ConnectionTable.on_client was never set")


class ConnectionTable:
    """Every client connection the master holds, by state (see the module docstring)."""

    __slots__ = ("_loop", "_timers", "alarm", "body", "idle", "linger", "new", "on_client",
                 "queue", "started", "watched")

    def __init__(self, loop: EventLoop, head_timeout: float, keepalive: float,
                 linger: Linger | None = None, body_timeout: float = 0.0,
                 alarm: Alarm | None = None) -> None:
        self._loop = loop
        #: Rings no later than the first timer below (or the linger list's) runs out.
        self.alarm = alarm = alarm if alarm is not None else Alarm()
        #: Answered connections on their way out (no longer in any state: CLOSED).
        self.linger = linger if linger is not None else Linger(loop, time.monotonic, alarm)
        #: QUEUED, oldest first.
        self.queue: deque[ClientConnection] = deque()
        #: fd -> connection, for the watched states (WAITING_FOR_HEAD, PARKED_*).
        self.watched: dict[int, ClientConnection] = {}
        self.new = Timeouts(head_timeout, alarm)  # WAITING_FOR_HEAD
        self.idle = Timeouts(keepalive, alarm)  # PARKED_IDLE
        self.started = Timeouts(head_timeout, alarm)  # PARKED_STARTED
        self.body = Timeouts(body_timeout or head_timeout, alarm)  # WAITING_FOR_BODY
        # The timer of each state, indexed by the state (None: not watched).
        self._timers: tuple[Timeouts | None, ...] = tuple(
            {ConnState.WAITING_FOR_HEAD: self.new, ConnState.PARKED_IDLE: self.idle,
             ConnState.PARKED_STARTED: self.started,
             ConnState.WAITING_FOR_BODY: self.body}.get(state) for state in ConnState)
        #: Called with (connection, epoll mask) when a watched connection has an event.
        self.on_client: Handler = _no_handler

    def set_timeouts(self, head_timeout: float, keepalive: float,
                     body_timeout: float = 0.0) -> None:
        """New settings: applies to running timers too (a body timeout of 0: the head's)."""
        self.new.timeout = self.started.timeout = head_timeout
        self.idle.timeout = keepalive
        self.body.timeout = body_timeout or head_timeout
        self.alarm.reset()

    # -- into a watched state --------------------------------------------------------------

    def wait_for_head(self, conn: ClientConnection, now: float) -> None:
        """NEW -> WAITING_FOR_HEAD: accepted, its head has not all arrived."""
        advance(conn, _HEAD_PENDING)
        self._watch(conn, self.new, now)

    def park(self, conn: ClientConnection, now: float) -> None:
        """HANDED_OUT -> PARKED_IDLE, or PARKED_STARTED if it holds part of the next head:
        its worker handed it back (``conn.prefix`` is what that worker read past its last
        request)."""
        if conn.prefix:
            advance(conn, _PARKED_PARTIAL)
            self._release(conn)
            self._watch(conn, self.started, now)
        else:
            advance(conn, _PARKED)
            self._release(conn)
            self._watch(conn, self.idle, now)

    def head_began(self, conn: ClientConnection, now: float) -> None:
        """PARKED_IDLE -> PARKED_STARTED: from now on it has the head timeout to complete."""
        advance(conn, _NEXT_HEAD_BEGAN)
        self.idle.remove(conn)
        self.started.add(conn, now)

    def wait_for_body(self, conn: ClientConnection, now: float) -> None:
        """NEW / WAITING_FOR_HEAD / PARKED_* -> WAITING_FOR_BODY: the head is here, a small
        body is on its way; its own timer starts now."""
        timer = self._timers[advance(conn, _BODY_PENDING)]
        if timer is None:
            self._watch(conn, self.body, now)
        else:
            timer.remove(conn)
            self.body.add(conn, now)

    # -- the queue and the workers ---------------------------------------------------------

    def enqueue(self, conn: ClientConnection, now: float) -> None:
        """NEW / WAITING_FOR_HEAD / PARKED_* / HANDED_OUT (handed back with a whole request)
        -> QUEUED, at the back."""
        was = advance(conn, _HEAD_READY)
        timer = self._timers[was]
        if timer is not None:
            self._unwatch(conn, timer)
        elif was is _HANDED_OUT:
            self._release(conn)
        conn.since = now
        self.queue.append(conn)

    def hand_out(self, link: WorkerLink, now: float) -> ClientConnection:
        """QUEUED -> HANDED_OUT: the head of the queue was sent to ``link``'s worker."""
        conn = self.queue[0]
        advance(conn, _SENT)
        self.queue.popleft()
        link.handed_out[conn.conn_id] = conn
        conn.holder = link
        conn.since = now  # from now on: how long it waits unread in the inbox
        return conn

    def finished(self, link: WorkerLink, conn_id: int) -> None:
        """HANDED_OUT -> CLOSED: the worker is done with it; the master closes its copy."""
        conn = link.handed_out.pop(conn_id, None)
        if conn is not None:
            advance(conn, _FINISHED)
            conn.holder = None
            if conn.polled:
                self._forget(conn)
            conn.close()

    def take_back(self, link: WorkerLink, conn_ids: Iterable[int]) -> int:
        """HANDED_OUT -> QUEUED for those of ``conn_ids`` that ``link`` holds.

        They go to the head of the queue, in the given order: they are the oldest work.
        Returns how many there were.
        """
        back: list[ClientConnection] = []
        handed_out = link.handed_out
        for conn_id in conn_ids:
            conn = handed_out.pop(conn_id, None)
            if conn is not None:
                advance(conn, _TAKEN_BACK)
                conn.holder = None
                back.append(conn)
        self.queue.extendleft(reversed(back))
        return len(back)

    # -- out -------------------------------------------------------------------------------

    def close(self, conn: ClientConnection, answer: bytes | None = None,
              link: WorkerLink | None = None) -> None:
        """Any state but CLOSED -> CLOSED: answer ``answer`` (if given) and close.

        ``link`` (optional) is the worker holding a HANDED_OUT connection.
        """
        was = advance(conn, _DROPPED)
        timer = self._timers[was]
        if timer is not None:
            self._unwatch(conn, timer)
        elif was is _QUEUED:
            if self.queue[0] is conn:  # shedding takes the oldest
                self.queue.popleft()
            else:
                self.queue.remove(conn)
        elif was is _HANDED_OUT:
            if link is not None and link is not conn.holder:
                raise ValueError(f"{conn!r} is not held by {link!r}")
            self._release(conn)
        if answer is None:
            if was is not _HANDED_OUT:
                # Unread bytes would turn the close into a reset (a client that sent half a
                # head and shut its side must see FIN, not RST). Not from a handed-out one:
                # what is pending there is its worker's to read.
                conn.discard_input()
            if conn.polled:
                self._forget(conn)
            conn.close()
        elif conn.answer(answer):
            # It may still be sending: read and drop it a while (the linger list owns it now;
            # it watches the fd itself, so the fd leaves our epoll set first).
            if conn.polled:
                self._loop.unwatch(conn.fd)
                conn.polled = _UNPOLLED
            self.linger.add(conn.give_socket())
        else:
            if conn.polled:
                self._forget(conn)
            conn.close()

    def close_all(self, links: Sequence[WorkerLink], *, in_child: bool) -> None:
        """Close every connection (master shutdown, or a freshly forked child's copies).

        In a child, epoll is left alone: it is shared with the master (see
        :meth:`~gunicorn_fdpass.master.loop.EventLoop.close_in_child`).
        """
        for fd in self.watched:
            if in_child:
                self._loop.forget(fd)
            else:
                self._loop.unwatch(fd)
        for conn in itertools.chain(self.queue, self.watched.values(),
                                    *(link.handed_out.values() for link in links)):
            advance(conn, _DROPPED)
            conn.holder = None
            if conn.polled == _DISARMED:
                self._loop.forget(conn.fd)  # closing the fd takes it out of the set
            conn.polled = _UNPOLLED
            conn.close()
        self.queue.clear()
        self.watched.clear()
        for timer in (self.new, self.idle, self.started, self.body):
            timer.clear()
        for link in links:
            link.handed_out.clear()
        self.linger.close_all(in_child=in_child)

    def next_deadline(self) -> float | None:
        """When the first timer of a watched or lingering connection runs out, if any."""
        return min((d for d in (self.new.next_deadline(), self.idle.next_deadline(),
                                self.started.next_deadline(), self.body.next_deadline(),
                                self.linger.next_deadline()) if d is not None), default=None)

    def audit(self, links: Sequence[WorkerLink]) -> None:
        """Check that every connection is where its state says (for tests; O(n))."""
        places: list[tuple[str, ClientConnection, set[ConnState]]] = []
        places += [("queue", c, {_QUEUED}) for c in self.queue]
        places += [("watched", c, set(WATCHED_STATES)) for c in self.watched.values()]
        places += [("handed_out", c, {_HANDED_OUT}) for link in links
                   for c in link.handed_out.values()]
        for link in links:
            for c in link.handed_out.values():
                if c.holder is not link:
                    raise AssertionError(f"{c!r} is handed out to {link!r} but held by "
                                         f"{c.holder!r}")
        for place, conn, allowed in places:
            if conn.state not in allowed:
                raise AssertionError(f"{conn!r} is in {place}")
        for conn in self.watched.values():
            timer = self._timers[conn.state]
            if timer is None or conn not in timer:
                raise AssertionError(f"{conn!r} is watched without its timer")
            if conn.polled not in (_ARMED, _EDGE):
                raise AssertionError(f"{conn!r} is watched but not armed ({conn.polled})")
        for place, conn, _ in places:
            if place != "watched" and conn.polled not in (_UNPOLLED, _DISARMED):
                raise AssertionError(f"{conn!r} in the {place} may still report events")
        timed = len(self.new) + len(self.idle) + len(self.started) + len(self.body)
        if timed != len(self.watched):
            raise AssertionError(f"{timed} timers for {len(self.watched)} watched connections")

    def _release(self, conn: ClientConnection) -> None:
        """Out of its worker link's ``handed_out`` map (its state says it left)."""
        del conn.holder.handed_out[conn.conn_id]
        conn.holder = None

    def _watch(self, conn: ClientConnection, timer: Timeouts, now: float) -> None:
        fd = conn.fd
        self.watched[fd] = conn
        timer.add(conn, now)
        if conn.polled == _DISARMED:
            self._loop.rearm(fd, _ONESHOT_EVENTS)  # still in the set since its last wait
        else:
            self._loop.watch(fd, _ONESHOT_EVENTS, self._on_event, conn)
        conn.polled = _ARMED

    def _unwatch(self, conn: ClientConnection, timer: Timeouts) -> None:
        fd = conn.fd
        del self.watched[fd]
        timer.remove(conn)
        if conn.polled != _DISARMED:
            # Armed or edge-triggered, it could still report: out of the set. (An entry is
            # only ever silenced by its one-shot event: a MOD always keeps hang-ups on.)
            self._loop.unwatch(fd)
            conn.polled = _UNPOLLED

    def _forget(self, conn: ClientConnection) -> None:
        """Before closing the master's copy: drop its handler. A disarmed entry is left to
        the close, which takes it out of the set (or, if the worker still holds the socket,
        leaves it there silent until the worker closes it too)."""
        if conn.polled == _DISARMED:
            self._loop.forget(conn.fd)
        else:
            self._loop.unwatch(conn.fd)
        conn.polled = _UNPOLLED

    def _on_event(self, conn: ClientConnection, events: int) -> None:
        """A watched connection has an event: the intake decides; it stays armed after."""
        if conn.polled == _ARMED:
            conn.polled = _DISARMED  # the kernel disarmed the one-shot entry
        self.on_client(conn, events)
        if conn.polled == _DISARMED and self._timers[conn.state] is not None:
            # Still waiting (half a head, a body on its way): report every arrival from now.
            self._loop.rearm(conn.fd, _EDGE_EVENTS)
            conn.polled = _EDGE
