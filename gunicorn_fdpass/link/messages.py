"""Sans-IO codec of the messages between the master and a worker.

One message is one ``SOCK_SEQPACKET`` datagram, so no framing is needed: a message is a fixed
header followed by an optional payload. File descriptors travel beside a message as
``SCM_RIGHTS`` ancillary data; :func:`carries_fd` says which kinds must carry one. This module
only turns messages into bytes and back; it never touches a socket.

Life of a connection on the wire (``Handoff`` travels in the worker's inbox, everything else
in its channel; see :mod:`~gunicorn_fdpass.master.links`)::

    master                          worker
      | <-------- Hello(capacity) ----- |   once, when the worker is ready
      | --- Handoff(id, prefix) + fd -> |   the master may take it back while unread
      | <-------- Done(id, ...) ------- |   the worker closed the connection(s), or
      | <----- Park(id, leftover) ----- |   the connection is idle: the master, which kept
      |                                 |   its copy of the fd, watches it again
      | <-------- Refused(id) --------- |   the fd did not arrive (instead of the above)
      | <-------- Draining ------------ |   the worker takes no new work and will exit
      | --------- Closing ------------> |   the master is stopping: end connections after
                                            the current response (``Connection: close``)

Kind 3 (``TAKEN``, a worker's acknowledgement of a handoff) is retired: the master keeps its
own copy of a handed-out fd until ``Done`` or ``Park``, so nothing needs acknowledging.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from ..errors import ProtocolError

# kind (u8), value (u32: capacity, or a socket's address family), connection id (u64; a pid
# in HELLO); network byte order.
_HEADER: Final = struct.Struct("!BIQ")
HEADER_SIZE: Final = _HEADER.size

#: Largest payload (prefix or leftover bytes) one message may carry. A SEQPACKET datagram must
#: fit in the socket send buffer (about 208 KiB by default on Linux); 64 KiB leaves room.
MAX_PAYLOAD: Final = 64 * 1024

#: Receive buffer size that always holds one whole message (a larger datagram is truncated).
MAX_MESSAGE: Final = HEADER_SIZE + MAX_PAYLOAD

_MAX_U32: Final = 2**32 - 1
_MAX_U64: Final = 2**64 - 1


class Kind(IntEnum):
    """Message kinds; the numbers are the wire values."""

    HELLO = 1
    HANDOFF = 2
    # 3 was TAKEN (retired: the master keeps its copy of a handed-out fd until Done or Park).
    REFUSED = 4
    DONE = 5
    PARK = 6
    DRAINING = 7
    CLOSING = 8


@dataclass(frozen=True, slots=True)
class Hello:
    """Worker -> master: ready, able to serve ``capacity`` connections at once."""

    capacity: int
    pid: int


@dataclass(frozen=True, slots=True)
class Handoff:
    """Master -> worker, with the client fd: serve this connection.

    ``prefix`` holds bytes of the connection that were already read (by a worker before the
    connection was parked) and must be parsed before anything read from the socket.
    ``family`` is the socket's address family (0: unknown), which spares the receiver the
    system calls that would otherwise detect it.
    """

    conn_id: int
    prefix: bytes = b""
    family: int = 0


@dataclass(frozen=True, slots=True)
class Refused:
    """Worker -> master: the handoff of ``conn_id`` arrived without its fd (``MSG_CTRUNC``)."""

    conn_id: int


@dataclass(frozen=True, slots=True)
class Done:
    """Worker -> master: ``conn_id`` (and each of ``more``) is finished and closed; as many
    slots are free again. ``more`` lets a worker that ended several connections in one turn
    of its loop say so in one message (the payload: 8 bytes per id)."""

    conn_id: int
    more: tuple[int, ...] = ()


#: Most connection ids one ``Done`` carries.
MAX_DONE: Final = 1 + MAX_PAYLOAD // 8


@dataclass(frozen=True, slots=True)
class Park:
    """Worker -> master: ``conn_id`` is idle between requests; the worker closed its copy.

    No fd travels: the master kept its own copy since the handoff. ``leftover`` holds bytes
    the worker read past the end of the last request; ``family`` as in :class:`Handoff`.
    """

    conn_id: int
    leftover: bytes = b""
    family: int = 0


@dataclass(frozen=True, slots=True)
class Draining:
    """Worker -> master: send no more work, this worker is about to exit."""


@dataclass(frozen=True, slots=True)
class Closing:
    """Master -> worker: the server is stopping; do not keep connections alive any more."""


Message = Hello | Handoff | Refused | Done | Park | Draining | Closing


_WITH_FD: Final = (Handoff,)


def carries_fd(message: Message) -> bool:
    """Whether ``message`` must travel with exactly one file descriptor."""
    return isinstance(message, _WITH_FD)


def encode(message: Message) -> bytes:
    """Serialise ``message`` into one datagram."""
    value = 0
    conn_id = 0
    payload = b""
    if isinstance(message, Hello):
        kind = Kind.HELLO
        if not 0 < message.capacity <= _MAX_U32:
            raise ProtocolError(f"capacity out of range: {message.capacity}")
        value = message.capacity
        conn_id = message.pid
    elif isinstance(message, Handoff):
        kind, conn_id, payload = Kind.HANDOFF, message.conn_id, message.prefix
        value = message.family
    elif isinstance(message, Refused):
        kind, conn_id = Kind.REFUSED, message.conn_id
    elif isinstance(message, Done):
        kind, conn_id = Kind.DONE, message.conn_id
        if message.more:
            if not all(0 <= more <= _MAX_U64 for more in message.more):
                raise ProtocolError(f"connection id out of range in {message.more}")
            payload = struct.pack(f"!{len(message.more)}Q", *message.more)
    elif isinstance(message, Park):
        kind, conn_id, payload = Kind.PARK, message.conn_id, message.leftover
        value = message.family
    elif isinstance(message, Draining):
        kind = Kind.DRAINING
    else:
        kind = Kind.CLOSING
    if not 0 <= value <= _MAX_U32:
        raise ProtocolError(f"value out of range: {value}")
    if not 0 <= conn_id <= _MAX_U64:
        raise ProtocolError(f"connection id out of range: {conn_id}")
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return _HEADER.pack(kind, value, conn_id) + payload


_KINDS: Final = {kind.value: kind for kind in Kind}


def more_ids(payload: bytes) -> tuple[int, ...]:
    """The further connection ids of a ``Done`` payload."""
    if len(payload) % 8:
        raise ProtocolError(f"DONE payload of {len(payload)} bytes is not a list of ids")
    return struct.unpack(f"!{len(payload) // 8}Q", payload) if payload else ()


def decode(datagram: bytes) -> Message:
    """Parse one datagram; raise :class:`ProtocolError` if it is not a valid message."""
    if len(datagram) < HEADER_SIZE:
        raise ProtocolError(f"datagram of {len(datagram)} bytes is shorter than a header")
    if len(datagram) > MAX_MESSAGE:
        raise ProtocolError(f"datagram of {len(datagram)} bytes exceeds {MAX_MESSAGE}")
    raw_kind, value, conn_id = _HEADER.unpack_from(datagram)
    payload = datagram[HEADER_SIZE:]
    kind = _KINDS.get(raw_kind)  # a dict lookup: calling the enum costs more per message
    if kind is None:
        raise ProtocolError(f"unknown message kind {raw_kind}")
    if payload and kind not in (Kind.HANDOFF, Kind.PARK, Kind.DONE):
        raise ProtocolError(f"{kind.name} carries no payload, got {len(payload)} bytes")
    if kind is Kind.HELLO:
        if value == 0:
            raise ProtocolError("HELLO with zero capacity")
        return Hello(capacity=value, pid=conn_id)
    if kind is Kind.HANDOFF:
        return Handoff(conn_id, payload, value)
    if kind is Kind.REFUSED:
        return Refused(conn_id)
    if kind is Kind.DONE:
        return Done(conn_id, more_ids(payload))
    if kind is Kind.PARK:
        return Park(conn_id, payload, value)
    if kind is Kind.DRAINING:
        return Draining()
    return Closing()
