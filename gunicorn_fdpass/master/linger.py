"""Polite closing in the master: answered connections linger a moment before their close.

When the master answers a client itself (408, 400, 403, 503) and closes, the client may still
be sending (the rest of a head or body). Closing a socket with unread bytes makes the kernel
send a reset, and a reset can destroy the answer before the client has read it. So after the
answer the master shuts its sending side (the client sees the answer, then FIN) and keeps the
socket here for a short while, reading and dropping what still arrives, until the client
closes too, :data:`LINGER_SECONDS` pass, or :data:`LINGER_BYTES` were dropped. Never blocks:
the sockets are non-blocking and watched by the master's epoll.

A lingering socket is no longer a connection of the master (its state is CLOSED); only this
list holds it, bounded by :data:`MAX_LINGERING` (the oldest is closed first).
"""

from __future__ import annotations

import select
import socket
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

from .loop import EventLoop
from .timers import Alarm

#: How long an answered connection may keep sending before it is closed anyway.
LINGER_SECONDS: Final = 2.0
#: How much it may send meanwhile.
LINGER_BYTES: Final = 256 * 1024
#: Sockets lingering at once at most; past it the oldest is closed at once.
MAX_LINGERING: Final = 1024

_EVENTS: Final = select.EPOLLIN | select.EPOLLRDHUP


class _Lingering:
    __slots__ = ("deadline", "dropped", "sock")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.dropped = 0


class Linger:
    """Sockets answered and shut for sending, closed once their client is done or too slow."""

    __slots__ = ("_alarm", "_clock", "_loop", "_socks")

    def __init__(self, loop: EventLoop, clock: Callable[[], float],
                 alarm: Alarm | None = None) -> None:
        self._loop = loop
        self._clock = clock
        self._alarm = alarm if alarm is not None else Alarm()
        #: fd -> lingering socket, oldest first (all share one timeout).
        self._socks: OrderedDict[int, _Lingering] = OrderedDict()

    def add(self, sock: socket.socket) -> None:
        """Keep ``sock`` (answered, shut for sending) until its client is done."""
        if len(self._socks) >= MAX_LINGERING:
            self._close(next(iter(self._socks)))
        fd = sock.fileno()
        entry = _Lingering(sock, self._clock() + LINGER_SECONDS)
        self._alarm.set(entry.deadline)
        self._socks[fd] = entry
        self._loop.watch(fd, _EVENTS, self._on_event, entry)

    def expire(self, now: float) -> None:
        """Close the sockets whose time is up."""
        socks = self._socks
        while socks:
            fd, entry = next(iter(socks.items()))
            if entry.deadline > now:
                return
            self._close(fd)

    def next_deadline(self) -> float | None:
        """When the oldest lingering socket is closed anyway, if any lingers."""
        for entry in self._socks.values():
            return entry.deadline
        return None

    def close_all(self, *, in_child: bool) -> None:
        """Close every lingering socket (shutdown, or a freshly forked child's copies; in a
        child, epoll is the master's: only forget the fds)."""
        for fd, entry in self._socks.items():
            if in_child:
                self._loop.forget(fd)
            else:
                self._loop.unwatch(fd)
            entry.sock.close()
        self._socks.clear()

    def __len__(self) -> int:
        return len(self._socks)

    def _on_event(self, entry: _Lingering, _: int) -> None:
        sock = entry.sock
        try:
            while entry.dropped < LINGER_BYTES:
                data = sock.recv(65536, socket.MSG_DONTWAIT)
                if not data:
                    break
                entry.dropped += len(data)
            # The client closed too, or sent more than it may: close now.
        except BlockingIOError:
            return  # all read; wait for more or for the deadline
        except OSError:
            pass
        self._close(sock.fileno())

    def _close(self, fd: int) -> None:
        entry = self._socks.pop(fd)
        self._loop.unwatch(fd)
        entry.sock.close()
