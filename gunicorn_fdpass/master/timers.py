"""Timers of the connections the master watches: one list per timeout, oldest first.

All connections in one :class:`Timeouts` share its timeout, so the one added first always
expires first: an ``OrderedDict`` keyed by connection id gives O(1) add, remove and "what
expires next", and expiry looks at no more than the expired ones plus one. The master checks
them whenever the :class:`Alarm` says one may have run out, and thousands of parked
connections may be waiting here.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

from .states import ClientConnection


class Alarm:
    """The earliest moment at which any of the master's timers may run out.

    Never later than the true earliest deadline, but possibly earlier: a timer that stops
    (its connection moved on) does not move the alarm back. So the loop skips every timer
    check until :attr:`at`, then looks at all of them once and sets the exact next one; a
    stale alarm costs one needless look, not a missed deadline. Without it, each round of
    the loop would ask every timer list, per request on a busy keep-alive server.
    """

    __slots__ = ("at",)

    def __init__(self) -> None:
        #: Monotonic seconds; 0 makes the next round look at every timer.
        self.at = 0.0

    def set(self, deadline: float) -> None:
        """Something runs out at ``deadline``: ring no later than that."""
        if deadline < self.at:
            self.at = deadline

    def reset(self) -> None:
        """Timeouts changed (a reload): look at every timer on the next round."""
        self.at = 0.0


class Timeouts:
    """Connections that all share one timeout, oldest first (O(1) add, remove, expire)."""

    __slots__ = ("_alarm", "_conns", "timeout")

    def __init__(self, timeout: float, alarm: Alarm | None = None) -> None:
        self.timeout = timeout
        self._alarm = alarm if alarm is not None else Alarm()
        self._conns: OrderedDict[int, ClientConnection] = OrderedDict()

    def add(self, conn: ClientConnection, now: float) -> None:
        """Start ``conn``'s timer at ``now``."""
        conn.since = now
        self._conns[conn.conn_id] = conn
        deadline = now + self.timeout
        alarm = self._alarm
        if deadline < alarm.at:  # Alarm.set, inline: this runs once per parked request
            alarm.at = deadline

    def remove(self, conn: ClientConnection) -> None:
        """Stop ``conn``'s timer (it must be running here)."""
        del self._conns[conn.conn_id]

    def oldest(self) -> ClientConnection | None:
        """The connection that expires first, if any."""
        return next(iter(self._conns.values()), None)

    def next_deadline(self) -> float | None:
        """When the oldest connection expires, if there is one."""
        oldest = self.oldest()
        return None if oldest is None else oldest.since + self.timeout

    def expired(self, now: float) -> list[ClientConnection]:
        """The connections whose time is up at ``now``, oldest first (still in here)."""
        out: list[ClientConnection] = []
        timeout = self.timeout
        for conn in self._conns.values():
            if conn.since + timeout > now:
                break
            out.append(conn)
        return out

    def clear(self) -> None:
        """Forget every timer."""
        self._conns.clear()

    def __contains__(self, conn: ClientConnection) -> bool:
        return self._conns.get(conn.conn_id) is conn

    def __len__(self) -> int:
        return len(self._conns)

    def __iter__(self) -> Iterator[ClientConnection]:
        return iter(list(self._conns.values()))
