"""The master's links to its workers: channels, their messages, and taking handoffs back.

Each worker has two socketpairs made before its fork: a two-way channel (``Hello``,
``Done``, ``Park``, ``Refused``, ``Draining`` from the worker; ``Closing`` from the master)
and an inbox its handoffs travel in. The master keeps its copy of every connection it handed
out until the worker says ``Done`` (then closes it) or ``Park`` (then watches it again: the
fd need not travel back). The master keeps the inbox's receiving end
open too: a handoff still unread there can be taken back (the kernel gives each datagram to
exactly one reader, so the worker and the master never both get it). That is how a reserve
moves to a worker that became free first, and how a draining or dead worker's unread handoffs
return to the queue. A handoff the worker has read is the worker's: if the worker dies, the
master closes its copy (the worker may have read from the connection or answered part of it).

Channel messages are read in batches (:func:`~gunicorn_fdpass.master.fastpath.core`'s
``recv_batch``: one ``recvmmsg``, no extra call that ends in ``EAGAIN``); ``Done``, the most
frequent one, is parsed on the spot.
"""

from __future__ import annotations

import os
import select
from dataclasses import dataclass
from typing import Any

from ..errors import PeerGone, ProtocolError
from ..link import messages
from ..link.board import WaitingBoard
from ..link.channel import Channel, Received
from .fastpath import RECV_GONE, RECV_OK, core
from .handoff import RESERVE, Handoff
from .loop import EventLoop
from .scheduler import Scheduler
from .states import ClientConnection
from .table import ConnectionTable

_DONE = int(messages.Kind.DONE)


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
    send, ``unread`` to take back what the worker has not read yet) and the connections
    handed out to it and not back or done yet (``handed_out``, written only by the
    :class:`~gunicorn_fdpass.master.table.ConnectionTable`)."""

    __slots__ = ("channel", "channel_fd", "handed_out", "handoff_fd", "handoffs", "pid",
                 "unread")

    def __init__(self, channel: Channel, handoffs: Channel, unread: Channel) -> None:
        self.channel = channel
        self.handoffs = handoffs
        self.unread = unread
        # The fd numbers, for the fast path (valid while the channels are open).
        self.channel_fd = channel.fileno()
        self.handoff_fd = handoffs.fileno()
        self.pid = 0
        self.handed_out: dict[int, ClientConnection] = {}

    def close(self) -> None:
        for channel in (self.channel, self.handoffs, self.unread):
            channel.close()

    def __repr__(self) -> str:
        return f"<WorkerLink pid={self.pid or '?'}>"


class Links:
    """Every worker link: made before a fork, watched after it, dropped when its worker goes."""

    __slots__ = ("_board", "_handoff", "_loop", "_pending", "_scheduler", "_stats", "_table",
                 "all", "log")

    def __init__(self, loop: EventLoop, table: ConnectionTable,
                 scheduler: Scheduler[WorkerLink], handoff: Handoff, board: WaitingBoard,
                 log: Any, stats: dict[str, int]) -> None:
        self._loop = loop
        self._table = table
        self._scheduler = scheduler
        self._handoff = handoff
        self._board = board
        self.log = log
        self._stats = stats
        #: The live links, in the order their workers were forked.
        self.all: list[WorkerLink] = []
        self._pending: list[tuple[WorkerLink, WorkerEnds]] = []

    def open_channel(self) -> WorkerEnds:
        """Make the channel and inbox of a worker about to be forked; return the worker's ends."""
        master_end, worker_end = Channel.pair()
        handoffs, inbox = Channel.pair()
        master_end.set_blocking(False)
        handoffs.set_blocking(False)
        ends = WorkerEnds(worker_end, inbox, self._board)
        self._pending.append((WorkerLink(master_end, handoffs, inbox), ends))
        return ends

    def adopt_pending(self, closing: bool) -> None:
        """After a fork, in the master: close the worker's channel end, keep its inbox end
        (it is ``link.unread``), watch the master's end. ``closing``: tell it to stop."""
        pending, self._pending = self._pending, []
        for link, ends in pending:
            # The channel end must not stay open here, or the master would never see the
            # channel hang up when the worker dies.
            ends.channel.close()
            self.all.append(link)
            self._loop.watch(link.channel_fd, select.EPOLLIN, self._on_channel, link)
            if closing:
                self.tell(link, messages.Closing())

    def close_in_child(self) -> WorkerEnds | None:
        """In a forked child: close every link fd; return the newest pending worker ends
        (the child's own, when the child is a worker), or None."""
        keep = self._pending[-1][1] if self._pending else None
        for link, ends in self._pending:
            link.channel.close()
            link.handoffs.close()  # the inbox end itself is also ``ends.inbox``: see below
            if ends is not keep:
                ends.channel.close()
                ends.inbox.close()
        self._pending = []
        self.close()
        return keep

    def close(self) -> None:
        """Close every link (their connections must be closed already)."""
        for link in self.all:
            link.close()
        self.all = []

    def tell(self, link: WorkerLink, message: messages.Message) -> None:
        """Send ``message`` on ``link``'s channel; a worker that is gone is dropped."""
        try:
            link.channel.send(message)
        except PeerGone:
            self.worker_gone(link)

    def take_back(self, link: WorkerLink) -> int:
        """Take the handoffs ``link``'s worker has not read out of its inbox; queue them first.

        The master still has its copy of each (in ``handed_out``), so the copy that comes back
        with the message is closed. Returns how many came back.
        """
        ids: list[int] = []
        while not link.unread.closed:
            try:
                received = link.unread.recv()
            except (PeerGone, ProtocolError):
                break
            if received is None:
                break
            if received.fd is not None:
                os.close(received.fd)
            if isinstance(received.message, messages.Handoff):
                ids.append(received.message.conn_id)
        back = self._table.take_back(link, ids)
        for _ in range(back):
            self._scheduler.release(link)
        self._stats["requeued"] += back
        return back

    def worker_gone(self, link: WorkerLink) -> None:
        """``link``'s worker died or hung up: what it had not read goes to the others."""
        if link.channel.closed:
            return
        self._loop.unwatch(link.channel_fd)
        # Unread handoffs come out of its inbox (closing the fds in flight there) and go to
        # the head of the queue. The ones it read were its own: the master closes its copies.
        back = self.take_back(link)
        link.close()
        self._scheduler.remove(link)
        self.all.remove(link)
        lost = list(link.handed_out.values())
        for conn in lost:
            self._table.close(conn, None, link)
        if back:
            self.log.info("worker %s left; %d connection(s) it had not taken go to others",
                          link.pid, back)
        if lost:
            self.log.info("worker %s left; %d connection(s) it was serving are closed",
                          link.pid, len(lost))

    def _on_channel(self, link: WorkerLink, _: int) -> None:
        try:
            batch, status = core.recv_batch(link.channel_fd)
        except OSError as exc:
            self.log.error("worker %s channel failed (%s); dropping it", link.pid, exc)
            self.worker_gone(link)
            return
        for data, fd, lost in batch:
            if data[0] == _DONE and fd < 0 and len(data) >= messages.HEADER_SIZE:
                # The most frequent message, parsed here without a message object; a torn
                # list of further ids is refused before any of them is acted on.
                more: tuple[int, ...] = ()
                if len(data) > messages.HEADER_SIZE:
                    try:
                        more = messages.more_ids(data[messages.HEADER_SIZE:])
                    except ProtocolError as exc:
                        self._bad_message(link, exc)
                        return
                self._finished(link, int.from_bytes(data[5:messages.HEADER_SIZE], "big"), more)
                continue
            try:
                message = messages.decode(data)
            except ProtocolError as exc:
                if fd >= 0:
                    os.close(fd)
                self._bad_message(link, exc)
                return
            if fd < 0 and isinstance(message, messages.Park):
                # The next most frequent (one per keep-alive request): no Received for it.
                self._on_park(link, message)
                continue
            if fd >= 0 and not messages.carries_fd(message):
                os.close(fd)
                fd = -1
            self._on_message(link, Received(message, fd if fd >= 0 else None,
                                            fd_lost=lost or (fd < 0 and
                                                             messages.carries_fd(message))))
            if link.channel.closed:
                return  # the message made the master drop this worker
        if status == RECV_GONE:
            self.worker_gone(link)
        elif status != RECV_OK:
            self._bad_message(link, ProtocolError("datagram larger than a message"))

    def _bad_message(self, link: WorkerLink, exc: ProtocolError) -> None:
        self.log.error("worker %s sent a bad message (%s); dropping its channel", link.pid, exc)
        self.worker_gone(link)

    def _on_message(self, link: WorkerLink, received: Received) -> None:
        message = received.message
        # Most frequent first: every connection ends with a Done or a Park.
        if isinstance(message, messages.Done):
            self._finished(link, message.conn_id, message.more)
        elif isinstance(message, messages.Park):
            self._on_park(link, message)
        elif isinstance(message, messages.Refused):
            self._scheduler.release(link)
            self._handoff.refused(link, message.conn_id)
        elif isinstance(message, messages.Hello):
            link.pid = message.pid
            self._scheduler.add(link, message.capacity,
                                RESERVE if message.capacity == 1 else 0)
        elif isinstance(message, messages.Draining):
            self._scheduler.drain(link)
            self.take_back(link)  # it will read no more: others serve them now
        else:
            self._on_unexpected(link, received)

    def _finished(self, link: WorkerLink, conn_id: int, more: tuple[int, ...]) -> None:
        """A Done: each connection's slot is free, and the master closes its copy."""
        scheduler = self._scheduler
        table = self._table
        scheduler.release(link)
        table.finished(link, conn_id)
        for other in more:
            scheduler.release(link)
            table.finished(link, other)

    def _on_park(self, link: WorkerLink, message: messages.Park) -> None:
        self._scheduler.release(link)
        conn = link.handed_out.get(message.conn_id)
        if conn is None:
            self.log.error("worker %s parked connection %d, which it does not hold",
                           link.pid, message.conn_id)
            return
        self._handoff.park(conn, message.leftover)

    def _on_unexpected(self, link: WorkerLink, received: Received) -> None:
        # Handoff and Closing: only the master sends those.
        if received.fd is not None:
            os.close(received.fd)
        self.log.error("worker %s sent an unexpected %s", link.pid,
                       type(received.message).__name__)
