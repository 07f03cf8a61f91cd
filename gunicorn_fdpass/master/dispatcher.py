"""The master's dispatcher: accept, wait for a request head, queue, hand off, park.

It runs in the Gunicorn master's main thread (see :mod:`~gunicorn_fdpass.master.arbiter` for
how it is driven), so forking a worker never races a dispatcher thread. Every socket is
non-blocking; the only blocking call is ``epoll.poll``, whose timeout the caller chooses.

:class:`Dispatcher` is a thin facade over parts with one job each:

- :mod:`.loop`: epoll, the wake-up pipe, a handler per fd;
- :mod:`.intake`: listeners, accept, peeking for a complete head, timeouts, back-pressure;
- :mod:`.states` and :mod:`.table`: each connection's one state, its transition table, and
  the one owner through which every transition goes (the life of a connection is there);
- :mod:`.handoff`: the queue, load shedding, handing out, moving reserves;
- :mod:`.links`: each worker's channel and inbox, its messages, taking handoffs back;
- :mod:`.scheduler`: which worker gets the next connection (pure policy).

Ownership: a client socket is in exactly one state at a time. While HANDED_OUT the master
keeps its copy until the worker says ``Done`` (the master closes it) or ``Park`` (the master
watches it again, no fd travels back). A handoff still unread in the worker's inbox is taken
back if the worker dies or drains; one it has read is the worker's to serve.

The hot path (accept + peek, the hand-off ``sendmsg``, batched channel reads) is in
:mod:`.fastpath`: a C extension, or its pure-Python twin.
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..http.request_rules import AddressAllowList
from ..link import messages
from ..link.board import WaitingBoard
from .handoff import Handoff
from .intake import Intake
from .linger import Linger
from .links import Links, WorkerEnds, WorkerLink
from .loop import EventLoop
from .scheduler import Scheduler
from .table import ConnectionTable
from .timers import Alarm

__all__ = ["DispatchSettings", "Dispatcher", "WorkerEnds"]

#: Poll timeout while work is queued and a slot is free: a handoff found a full inbox.
_RETRY_FULL_INBOX = 0.01


@dataclass(frozen=True, slots=True)
class DispatchSettings:
    """What the dispatcher needs from the configuration."""

    #: Seconds a parked keep-alive connection may stay idle; 0 disables parking.
    keepalive: float
    #: Seconds for a request head to arrive completely.
    head_timeout: float
    #: Connections waiting for a worker before the master stops accepting (back-pressure).
    max_queue: int
    #: Connections the master holds at most (watched + queued); past it the oldest one whose
    #: head is incomplete is answered 408 (then the oldest idle parked one, then the oldest
    #: waiting for its body), or accepting pauses if none can go.
    max_connections: int
    #: Shed (answer 503) a request that would queue behind this many; 0: never.
    shed_queue: int = 0
    #: Shed a request that waited this long for a worker; 0: never.
    shed_wait: float = 0.0
    #: ``Retry-After`` seconds of a 503.
    retry_after: int = 1
    #: A head this long without its end is handed over anyway: the worker reads on, or
    #: answers 431. Capped at :data:`~gunicorn_fdpass.master.intake.MAX_PEEK`.
    max_head: int = 64 * 1024
    #: The listeners speak TLS: a connection is ready once its first TLS record arrived.
    tls: bool = False
    #: ``Server`` header of the master's own answers (408, 503), as on every response.
    server_software: str = ""
    #: A body of at most this many bytes waits in the master (0: none does).
    body_buffer: int = 0
    #: Seconds such a body may take once its head is there (0: ``head_timeout``).
    body_timeout: float = 0.0
    #: Gunicorn's ``proxy_protocol`` ("off", "v1", "v2", "auto") and ``proxy_allow_ips``:
    #: the master reads a PROXY header too, to refuse a bad one at once.
    proxy_protocol: str = "off"
    proxy_allow: AddressAllowList = field(default_factory=lambda: AddressAllowList(["*"]))


class Dispatcher:
    """Owns the accept side of the listeners, every worker channel, and client sockets.

    ``clock`` returns monotonic seconds; tests pass a fake one and move time themselves.
    """

    def __init__(self, log: Any, settings: DispatchSettings,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.log = log
        self.owner_pid = os.getpid()
        self._clock = clock
        self._loop = EventLoop()
        self._scheduler: Scheduler[WorkerLink] = Scheduler()
        self.board = WaitingBoard()
        self.stats = {"accepted": 0, "dispatched": 0, "requeued": 0, "refused": 0, "shed": 0,
                      "timed_out": 0, "evicted": 0, "rejected": 0}
        self._alarm = alarm = Alarm()
        self._table = ConnectionTable(self._loop, settings.head_timeout, settings.keepalive,
                                      Linger(self._loop, clock, alarm), settings.body_timeout,
                                      alarm)
        self._handoff = Handoff(self._table, self._scheduler, settings, log, self.stats, clock)
        self._links = Links(self._loop, self._table, self._scheduler, self._handoff,
                            self.board, log, self.stats)
        self._intake = Intake(self._loop, self._table, self._handoff, settings, log,
                              self.stats, clock)
        self._table.on_client = self._intake.on_client
        self._shutting_down = False
        self._settings = settings

    # -- set-up ---------------------------------------------------------------------------

    @property
    def settings(self) -> DispatchSettings:
        """The settings in use; assigning new ones applies them at once (reload)."""
        return self._settings

    @settings.setter
    def settings(self, value: DispatchSettings) -> None:
        self._settings = value
        self._table.set_timeouts(value.head_timeout, value.keepalive, value.body_timeout)
        self._handoff.configure(value)
        self._intake.configure(value)

    @property
    def wakeup_fd(self) -> int:
        """Write end of the self-pipe; any byte written wakes :meth:`poll` up."""
        return self._loop.wakeup_fd

    def wake(self) -> None:
        """Interrupt a :meth:`poll` in progress (safe from signal handlers and threads)."""
        self._loop.wake()

    def set_listeners(self, listeners: Iterable[socket.socket]) -> None:
        """Accept on exactly these sockets from now on (Gunicorn owns and closes them)."""
        self._intake.set_listeners(listeners)

    def open_channel(self) -> WorkerEnds:
        """Make the channel and inbox of a worker about to be forked; return the worker's ends.

        The master's ends are adopted right after the fork (:meth:`after_fork_in_parent`).
        """
        return self._links.open_channel()

    def after_fork_in_parent(self) -> None:
        """Close the worker's channel end; keep its inbox end; watch the master's end."""
        self._links.adopt_pending(closing=self._shutting_down)

    def after_fork_in_child(self) -> WorkerEnds | None:
        """In a freshly forked child: close every fd the master owns.

        Returns the worker ends of the newest pending link (the child's own, when the child is
        a worker: Gunicorn forks right after creating the worker object), or None.
        """
        self._table.close_all(self._links.all, in_child=True)
        keep = self._links.close_in_child()
        self._intake.forget_in_child()
        self._loop.close_in_child()
        self.owner_pid = -1
        return keep

    # -- running --------------------------------------------------------------------------

    def run(self, timeout: float) -> None:
        """Rounds of :meth:`poll` for up to ``timeout`` seconds; return early once the wake-up
        pipe was written (a signal for Gunicorn's arbiter to act on, or :meth:`wake`).

        Looping here rather than in the caller keeps a busy master's round short: the
        arbiter glue (signals, reloads, reports) runs only when there is something for it.
        """
        loop = self._loop
        loop.woken = False
        now = self._clock()
        end = now + timeout
        while True:
            now = self.poll(end - now)
            if loop.woken or now >= end:
                return

    def poll(self, timeout: float) -> float:
        """Wait up to ``timeout`` seconds for events, handle them, dispatch queued work.

        Returns the clock's time after the wait."""
        alarm = self._alarm
        now = self._clock()
        if now >= alarm.at:
            self._run_timers(now)
        intake = self._intake
        if not intake.accepting:
            intake.resume_if_due(now)
        queue = self._table.queue
        if queue:
            if self._settings.shed_wait:  # its deadline moves with the queue's head
                alarm.set(queue[0].since + self._settings.shed_wait)
            if self._scheduler.free_slots():
                timeout = _RETRY_FULL_INBOX
        self._loop.poll(min(timeout, alarm.at - now))
        now = self._clock()
        if now >= alarm.at:
            self._run_timers(now)
        self._handoff.dispatch(now, self._links)
        self.board.publish(len(queue) + self._scheduler.reserves_held())
        return now

    def _run_timers(self, now: float) -> None:
        """The alarm rang: act on every timer that ran out, then set it to the next one."""
        self._intake.resume_if_due(now)
        self._intake.expire(now)
        self._handoff.shed_overdue(now)
        deadlines = [d for d in (self._table.next_deadline(), self._handoff.next_deadline(),
                                 self._intake.paused_until or None) if d is not None]
        self._alarm.at = min(deadlines, default=math.inf)

    def begin_shutdown(self) -> None:
        """Graceful stop: accept nothing more; serve what is queued or in a worker.

        Workers are told to end each connection after its current response. Idle
        connections stay watched meanwhile, so that a request already on its way on one
        is still served rather than cut off; :meth:`close` ends the idle rest.
        """
        if self._shutting_down:
            return
        self._shutting_down = True
        self._intake.stop_accepting()
        for link in list(self._links.all):
            self._links.tell(link, messages.Closing())

    def drained(self) -> bool:
        """True once nothing is queued, in a worker, or half-received."""
        if self._table.queue or any(self._scheduler.busy(link) for link in self._links.all):
            return False
        return not any(conn.has_bytes() for conn in self._table.watched.values())

    def close(self) -> None:
        """Close everything the dispatcher owns (master shutdown)."""
        self._table.close_all(self._links.all, in_child=False)
        self._links.close()
        self._intake.close()

    # -- live numbers ---------------------------------------------------------------------

    def counts(self) -> dict[str, float]:
        """Live numbers: connections by state, slots in use and reserves held, totals so far,
        queue wait. ``busy`` counts slots serving a connection; ``reserves`` the connections
        waiting unread at a busy single-slot worker (see :mod:`.scheduler`)."""
        table = self._table
        scheduler = self._scheduler
        dispatched = self.stats["dispatched"]
        reserves = scheduler.reserves_held()
        return {
            "queued": len(table.queue),
            "parked": len(table.idle) + len(table.started),
            "waiting_for_head": len(table.new),
            "waiting_for_body": len(table.body),
            "lingering": len(table.linger),
            "workers": len(scheduler),
            "busy": sum(scheduler.busy(link) for link in self._links.all) - reserves,
            "reserves": reserves,
            "queue_wait_avg_ms": (1000.0 * self._handoff.wait_total / dispatched
                                  if dispatched else 0.0),
            "queue_wait_max_ms": 1000.0 * self._handoff.wait_max,
            **self.stats,
        }

    def busy_by_worker(self) -> dict[int, int]:
        """Slots in use per worker pid (reserves not counted: see :meth:`reserves_by_worker`)."""
        scheduler = self._scheduler
        return {link.pid: scheduler.busy(link) - scheduler.reserves(link)
                for link in self._links.all if link.pid}

    def reserves_by_worker(self) -> dict[int, int]:
        """Reserves held per worker pid."""
        return {link.pid: self._scheduler.reserves(link) for link in self._links.all
                if link.pid}

    def audit(self) -> None:
        """Check that every connection is where its state says (for tests)."""
        self._table.audit(self._links.all)
