"""One state per client connection the master holds, and the only transitions allowed.

Every connection the master accepts is a :class:`ClientConnection` in exactly one
:class:`ConnState`. Each change of state is an :class:`Event`; :data:`TRANSITIONS` lists every
allowed ``(state, event) -> state`` pair, in one place. Anything else is a bug in the master:
:func:`advance` raises :class:`TransitionError` rather than let a connection be in two places
(or none).

::

    state             event            next state        what happened
    NEW               HEAD_PENDING     WAITING_FOR_HEAD  accepted; its head is not all there
    NEW               HEAD_READY       QUEUED            accepted with its whole request there
    NEW               BODY_PENDING     WAITING_FOR_BODY  accepted with its head; a body of at most
                                                         FDPASS_BODY_BUFFER bytes is on its way
    WAITING_FOR_HEAD  HEAD_READY       QUEUED            the head arrived (and its body, if any)
    WAITING_FOR_HEAD  BODY_PENDING     WAITING_FOR_BODY  the head arrived, its body has not
    WAITING_FOR_BODY  HEAD_READY       QUEUED            the rest of the body arrived
    PARKED_IDLE       NEXT_HEAD_BEGAN  PARKED_STARTED    the next request's first bytes came
    PARKED_IDLE       HEAD_READY       QUEUED            the whole next head came at once
    PARKED_STARTED    HEAD_READY       QUEUED            the rest of the next head arrived
    PARKED_*          BODY_PENDING     WAITING_FOR_BODY  the next head arrived, its body has not
    QUEUED            SENT             HANDED_OUT        put into a worker's inbox
    HANDED_OUT        TAKEN_BACK       QUEUED            still unread in the inbox and taken
                                                         back (a reserve moves, the worker
                                                         drains or died), or refused by the
                                                         worker (its fd was lost)
    HANDED_OUT        FINISHED         CLOSED            the worker is done with it (Done): the
                                                         master closes its copy
    HANDED_OUT        PARKED           PARKED_IDLE       the worker handed it back idle (Park)
    HANDED_OUT        PARKED_PARTIAL   PARKED_STARTED    ... with part of the next head read
    HANDED_OUT        HEAD_READY       QUEUED            ... with a whole next request read
    any but CLOSED    DROPPED          CLOSED            hang-up, timeout (408), shed (503),
                                                         eviction, refused too often, shutdown,
                                                         bytes refused at once (400, 403)

HEAD_READY means "ready for a worker": the whole head, and the whole body too when it is small
enough to wait for in the master (:mod:`~gunicorn_fdpass.http.arrival` decides).

While it waits for bytes (WAITING_FOR_HEAD, WAITING_FOR_BODY, PARKED_*) a connection is watched
by epoll and has a timer; QUEUED ones are in the master's FIFO queue; HANDED_OUT ones are in a
worker link's ``handed_out`` map: the master keeps its copy of the socket until the worker says
``Done`` or hands it back with ``Park`` (which then needs no fd), and a handoff still unread in
the inbox can be taken back.
:class:`~gunicorn_fdpass.master.table.ConnectionTable` is the one owner that moves
connections between those places, always together with the state.

Cost: the master's per-connection CPU is the project's bottleneck, so a transition is two
tuple indexings and one attribute write, and the state lives in a ``__slots__`` attribute.
"""

from __future__ import annotations

import errno
import os
import socket
from enum import IntEnum
from typing import Any, Final

from ..errors import FdpassError


class ConnState(IntEnum):
    """Where a connection is in the master (an int: it indexes the transition table)."""

    NEW = 0  # just accepted: not placed yet
    WAITING_FOR_HEAD = 1  # watched: its first request head has not fully arrived
    PARKED_IDLE = 2  # watched: an idle keep-alive connection, nothing of the next request yet
    PARKED_STARTED = 3  # watched: a keep-alive connection whose next head is under way
    QUEUED = 4  # in the master's queue, waiting for a worker
    HANDED_OUT = 5  # sent to a worker (maybe still unread in its inbox), not back or done
    CLOSED = 6  # the master holds it no more (closed, answered, or the worker's now)
    # Last, so that the values stay the positions the transition table is indexed by.
    WAITING_FOR_BODY = 7  # watched: its head is here, a small body is still on its way


class Event(IntEnum):
    """What happened to a connection (see the module docstring for the table)."""

    HEAD_PENDING = 0
    HEAD_READY = 1
    PARKED = 2
    PARKED_PARTIAL = 3
    NEXT_HEAD_BEGAN = 4
    SENT = 5
    TAKEN_BACK = 6
    FINISHED = 7
    DROPPED = 8
    BODY_PENDING = 9


_S = ConnState
_E = Event

#: Every allowed transition: ``(state, event) -> next state``. Nothing else may happen.
TRANSITIONS: Final[dict[tuple[ConnState, Event], ConnState]] = {
    (_S.NEW, _E.HEAD_PENDING): _S.WAITING_FOR_HEAD,
    (_S.NEW, _E.HEAD_READY): _S.QUEUED,
    (_S.NEW, _E.BODY_PENDING): _S.WAITING_FOR_BODY,
    (_S.NEW, _E.DROPPED): _S.CLOSED,
    (_S.WAITING_FOR_HEAD, _E.HEAD_READY): _S.QUEUED,
    (_S.WAITING_FOR_HEAD, _E.BODY_PENDING): _S.WAITING_FOR_BODY,
    (_S.WAITING_FOR_HEAD, _E.DROPPED): _S.CLOSED,
    (_S.WAITING_FOR_BODY, _E.HEAD_READY): _S.QUEUED,
    (_S.WAITING_FOR_BODY, _E.DROPPED): _S.CLOSED,
    (_S.PARKED_IDLE, _E.NEXT_HEAD_BEGAN): _S.PARKED_STARTED,
    (_S.PARKED_IDLE, _E.HEAD_READY): _S.QUEUED,
    (_S.PARKED_IDLE, _E.BODY_PENDING): _S.WAITING_FOR_BODY,
    (_S.PARKED_IDLE, _E.DROPPED): _S.CLOSED,
    (_S.PARKED_STARTED, _E.HEAD_READY): _S.QUEUED,
    (_S.PARKED_STARTED, _E.BODY_PENDING): _S.WAITING_FOR_BODY,
    (_S.PARKED_STARTED, _E.DROPPED): _S.CLOSED,
    (_S.QUEUED, _E.SENT): _S.HANDED_OUT,
    (_S.QUEUED, _E.DROPPED): _S.CLOSED,
    (_S.HANDED_OUT, _E.TAKEN_BACK): _S.QUEUED,
    (_S.HANDED_OUT, _E.FINISHED): _S.CLOSED,
    (_S.HANDED_OUT, _E.PARKED): _S.PARKED_IDLE,
    (_S.HANDED_OUT, _E.PARKED_PARTIAL): _S.PARKED_STARTED,
    (_S.HANDED_OUT, _E.HEAD_READY): _S.QUEUED,
    (_S.HANDED_OUT, _E.DROPPED): _S.CLOSED,
}

#: The table as nested tuples, ``_NEXT[state][event]`` (None: forbidden): indexing a tuple
#: by an int is cheaper than hashing a pair of enum members on every transition.
_NEXT: Final[tuple[tuple[ConnState | None, ...], ...]] = tuple(
    tuple(TRANSITIONS.get((state, event)) for event in Event) for state in ConnState
)

#: The states in which a connection waits for bytes: watched by epoll, with a timer.
WATCHED_STATES: Final = frozenset({_S.WAITING_FOR_HEAD, _S.WAITING_FOR_BODY, _S.PARKED_IDLE,
                                   _S.PARKED_STARTED})


#: Most bytes the master reads and drops from a connection it closes (see
#: :meth:`ClientConnection.discard_input`).
MAX_DISCARD: Final = 256 * 1024


class TransitionError(FdpassError):
    """A connection was asked to make a transition :data:`TRANSITIONS` does not allow: a bug."""


class ClientConnection:
    """The master's record of one client connection while the master holds it.

    It keeps the raw ``fd``: the master's hot path (:mod:`.fastpath`) needs no socket object,
    whose making costs a ``getsockname``. :attr:`sock` makes one on first use, for the rarer
    paths (answering 408 or 503, a head that needs a closer look).
    """

    __slots__ = ("_sock", "conn_id", "family", "fd", "holder", "polled", "prefix", "proxy_ok",
                 "refusals", "refused_by", "since", "state")

    def __init__(self, conn_id: int, sock: socket.socket | None, prefix: bytes = b"",
                 fd: int = -1, family: int = socket.AF_INET) -> None:
        self.conn_id = conn_id
        self._sock = sock
        if sock is not None:
            fd, family = sock.fileno(), sock.family
        #: The master's copy of the client socket (-1 once closed).
        self.fd = fd
        self.family = family
        #: Bytes of the next request a worker already read (handed back with a Park).
        self.prefix = prefix
        self.refusals = 0
        #: The worker that refused it last (out of fds): the next try goes elsewhere if it can.
        self.refused_by: object | None = None
        #: The worker link it is handed out to (while HANDED_OUT).
        self.holder: Any = None
        #: When it entered its current timer, the queue, or a worker's inbox.
        self.since = 0.0
        self.state = ConnState.NEW
        #: How the master's epoll has its fd (0: not at all; the rest is :mod:`.table`'s).
        self.polled = 0
        #: The peer may send a PROXY header (it is in ``proxy_allow_ips``); None: not known
        #: yet (the fast path reads no peer address; the intake asks when it must).
        self.proxy_ok: bool | None = None

    @property
    def sock(self) -> socket.socket:
        """A socket object over :attr:`fd`, made on first use (it owns the fd from then on)."""
        if self._sock is None:
            if self.fd < 0:
                raise OSError(errno.EBADF, "connection already closed")
            self._sock = socket.socket(self.family, socket.SOCK_STREAM, 0, fileno=self.fd)
        return self._sock

    def close(self) -> None:
        """Close the master's copy (idempotent)."""
        if self._sock is not None:
            self._sock.close()
        elif self.fd >= 0:
            os.close(self.fd)
        self.fd = -1

    def has_bytes(self) -> bool:
        """True if the client sent anything not yet consumed (a request under way)."""
        if self.prefix:
            return True
        try:
            return bool(self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except OSError:
            return False

    def discard_input(self) -> bool:
        """Read and drop what the client sent that nobody will read, without blocking (at
        most :data:`MAX_DISCARD` bytes). Closing a socket with unread bytes makes the kernel
        send a reset, which can destroy an answer still in flight; after this, the close is
        an orderly FIN. Returns True if the client's side is still open (no EOF seen)."""
        sock = self.sock
        total = 0
        try:
            while total < MAX_DISCARD:
                data = sock.recv(65536, socket.MSG_DONTWAIT)
                if not data:
                    return False
                total += len(data)
        except BlockingIOError:
            return True
        except OSError:
            return False
        return True

    def answer(self, answer: bytes) -> bool:
        """Send the master's own answer (408, 503, 400...) and shut the sending side, never
        blocking. Returns True if the socket should linger (the client may still send)."""
        open_ = self.discard_input()
        sock = self.sock
        try:
            sock.send(answer, socket.MSG_DONTWAIT)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            return False
        return open_

    def give_socket(self) -> socket.socket:
        """Hand the socket object over to a new owner (the linger list): this record holds
        no fd any more, and :meth:`close` does nothing."""
        sock = self.sock
        self._sock = None
        self.fd = -1
        return sock

    def __repr__(self) -> str:
        return f"<ClientConnection {self.conn_id} {self.state.name}>"


def advance(conn: ClientConnection, event: Event) -> ConnState:
    """Move ``conn`` on by ``event``; return the state it was in.

    Raises :class:`TransitionError` if :data:`TRANSITIONS` does not allow it.
    """
    was = conn.state
    nxt = _NEXT[was][event]
    if nxt is None:
        raise TransitionError(f"connection {conn.conn_id}: {event.name} is not allowed "
                              f"in state {was.name}")
    conn.state = nxt
    return was
