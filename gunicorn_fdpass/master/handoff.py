"""The master's queue and the hand-off to workers.

A connection whose request head is complete waits in one FIFO queue until the scheduler
(:mod:`~gunicorn_fdpass.master.scheduler`) names a worker; it is then put, with its fd, into
that worker's inbox. Here too: load shedding (503 instead of queueing when the queue is too
long, or once a request waited too long), a connection refused by workers (its fd lost in
transit), a keep-alive connection a worker hands back, and when a reserve waiting unread at a
busy worker is taken back for a worker that became free.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from ..http.head import head_complete
from ..http.serialize import error_message
from .fastpath import core
from .scheduler import Scheduler
from .states import ClientConnection
from .table import ConnectionTable

if TYPE_CHECKING:
    from .dispatcher import DispatchSettings
    from .links import Links, WorkerLink

#: How often a connection may come back refused (its fd lost in transit) before the master
#: answers it 503 itself instead of trying yet another worker.
MAX_REFUSALS: Final = 3

#: Reserves per single-slot worker. Such a worker reads its inbox only when it is free, so a
#: reserve stays unread, and can be taken back, until then. A threaded worker passes what it
#: reads to its pool at once, so it gets none.
RESERVE: Final = 1

#: A reserve waiting longer than this is taken back for a worker that has a free slot even
#: while other connections are queued (with none queued it is taken back at once): a
#: connection does not sit behind a slow request for longer than this while others are served.
RESERVE_PATIENCE: Final = 0.005

#: A worker's inbox refuses a handoff with these when the worker is gone.
_PEER_GONE_ERRNOS: Final = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN,
                                      errno.ECONNREFUSED})


class Handoff:
    """The queue's policy: what enters it, what is shed, what goes to which worker when."""

    __slots__ = ("_clock", "_scheduler", "_settings", "_stats", "_table", "log", "wait_max",
                 "wait_total")

    def __init__(self, table: ConnectionTable, scheduler: Scheduler[WorkerLink],
                 settings: DispatchSettings, log: Any, stats: dict[str, int],
                 clock: Callable[[], float]) -> None:
        self._table = table
        self._scheduler = scheduler
        self._settings = settings
        self.log = log
        self._stats = stats
        self._clock = clock
        #: Seconds queued, summed over dispatched connections, and the longest.
        self.wait_total = 0.0
        self.wait_max = 0.0

    def configure(self, settings: DispatchSettings) -> None:
        """Use new settings from now on."""
        self._settings = settings

    def enqueue(self, conn: ClientConnection, now: float) -> None:
        """A connection's request head is complete: queue it, or shed it if the queue is long."""
        shed_at = self._settings.shed_queue
        queued = len(self._table.queue)
        if shed_at and queued >= shed_at:
            self.shed(conn, f"{queued} requests already queued")
        else:
            self._table.enqueue(conn, now)

    def park(self, conn: ClientConnection, leftover: bytes) -> None:
        """A worker handed a keep-alive connection back (HANDED_OUT); ``leftover`` is what it
        read past its last request."""
        conn.prefix = leftover
        conn.refusals = 0
        conn.refused_by = None
        if self._settings.keepalive <= 0:
            self._table.close(conn)
        elif leftover and head_complete(leftover):
            # A pipelined request the worker left unserved (its burst was used up): it needs
            # no more data, so it waits in the queue, not for the socket to become readable.
            self.enqueue(conn, self._clock())
        else:
            self._table.park(conn, self._clock())

    def refused(self, link: WorkerLink, conn_id: int) -> None:
        """``link``'s worker could not receive a connection: try another, or answer 503."""
        conn = link.handed_out.get(conn_id)
        if conn is None:
            return
        conn.refusals += 1
        conn.refused_by = link
        self._stats["refused"] += 1
        if conn.refusals < MAX_REFUSALS:
            self.log.warning("worker %s could not receive a connection (out of fds?); "
                             "handing it to another worker", link.pid)
            self._table.take_back(link, (conn_id,))
            return
        self.log.error("connection refused by workers %d times; answering 503", conn.refusals)
        self.shed(conn, "no worker could receive it", count=False, link=link)

    def shed(self, conn: ClientConnection, why: str, count: bool = True,
             link: WorkerLink | None = None) -> None:
        """Answer 503 with ``Retry-After`` and close."""
        if count:
            self._stats["shed"] += 1
            self.log.warning("load shedding: 503 for a request (%s)", why)
        settings = self._settings
        retry = (("Retry-After", str(settings.retry_after)),)
        answer = error_message(503, settings.server_software, extra_headers=retry)
        self._table.close(conn, answer.data, link)

    def shed_overdue(self, now: float) -> None:
        """Shed the queued connections that waited ``shed_wait`` or longer."""
        wait = self._settings.shed_wait
        queue = self._table.queue
        while wait and queue and queue[0].since + wait <= now:
            self.shed(queue[0], f"waited {wait:g}s for a worker")

    def next_deadline(self) -> float | None:
        """When the oldest queued connection is shed, if shedding by wait is on."""
        queue = self._table.queue
        if self._settings.shed_wait and queue:
            return queue[0].since + self._settings.shed_wait
        return None

    def dispatch(self, now: float, links: Links) -> None:
        """Hand queued connections to workers while the scheduler names one."""
        table = self._table
        queue = table.queue
        scheduler = self._scheduler
        if scheduler.free_slots():
            self._move_reserves(now, links, bool(queue))
        if not (queue and scheduler.can_take()):
            return
        stats = self._stats
        send_handoff = core.send_handoff
        while queue:
            conn = queue[0]
            link = scheduler.pick(avoid=conn.refused_by)
            if link is None:
                break
            try:
                sent = send_handoff(link.handoff_fd, conn.conn_id, conn.family, conn.prefix,
                                    conn.fd)
            except OSError as exc:
                if exc.errno not in _PEER_GONE_ERRNOS:
                    raise
                links.worker_gone(link)  # its unread ones are queued before this one
                continue
            if not sent:
                # The worker's receive queue is full: it will read it soon; try later.
                scheduler.release(link)
                break
            waited = now - conn.since
            table.hand_out(link, now)
            stats["dispatched"] += 1
            self.wait_total += waited
            if waited > self.wait_max:
                self.wait_max = waited

    def _move_reserves(self, now: float, links: Links, others_wait: bool) -> None:
        """A reserve waiting at a busy worker goes to a free one: at once if nothing else
        waits, else once it waited RESERVE_PATIENCE (it is older than the queue)."""
        for holder in self._scheduler.overbooked():
            # The reserve is the newest of what the holder has (the others it is serving).
            held = holder.handed_out
            if held and (not others_wait or now - max(
                    c.since for c in held.values()) >= RESERVE_PATIENCE):
                links.take_back(holder)
