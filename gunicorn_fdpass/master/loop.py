"""The master's event loop: one epoll, a wake-up pipe, and a handler per watched fd.

It runs in the Gunicorn master's main thread; ``epoll.poll`` is the only blocking call, for
as long as the caller says. A byte written to :attr:`EventLoop.wakeup_fd` (by a signal
handler through ``signal.set_wakeup_fd``, or by :meth:`EventLoop.wake`) ends a wait at once.
"""

from __future__ import annotations

import os
import select
from collections.abc import Callable
from typing import Any

#: An event handler: called with the object it was registered for and the epoll event mask.
Handler = Callable[[Any, int], None]


class EventLoop:
    """epoll plus the handler registered for each fd."""

    __slots__ = ("_epoll", "_handlers", "_wake_r", "_wake_w", "woken")

    def __init__(self) -> None:
        #: Set when a byte on the wake-up pipe was read (a signal, or :meth:`wake`); the
        #: caller clears it.
        self.woken = False
        self._epoll = select.epoll()
        self._handlers: dict[int, tuple[Handler, Any]] = {}
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.watch(self._wake_r, select.EPOLLIN, self._on_wake, None)

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

    def watch(self, fd: int, events: int, handler: Handler, obj: Any) -> None:
        """Call ``handler(obj, mask)`` whenever ``fd`` has one of ``events``."""
        self._epoll.register(fd, events)
        self._handlers[fd] = (handler, obj)

    def rearm(self, fd: int, events: int) -> None:
        """Change what a watched ``fd`` reports (its handler stays): re-arms a one-shot entry
        that fired."""
        self._epoll.modify(fd, events)

    def unwatch(self, fd: int) -> None:
        """Stop watching ``fd`` (which must still be open and watched)."""
        del self._handlers[fd]
        self._epoll.unregister(fd)

    def unwatch_closed(self, fd: int) -> None:
        """Stop watching ``fd``, which someone else may have closed already."""
        del self._handlers[fd]
        try:
            self._epoll.unregister(fd)
        except OSError:
            pass  # already closed: the kernel dropped it from the set

    def forget(self, fd: int) -> None:
        """Drop ``fd``'s handler without touching epoll: in a forked child (see below), or
        for a one-shot entry that fired and whose fd is about to be closed."""
        self._handlers.pop(fd, None)

    def poll(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for events and run their handlers."""
        try:
            events = self._epoll.poll(max(0.0, timeout))
        except InterruptedError:
            return
        handlers = self._handlers
        for fd, mask in events:
            entry = handlers.get(fd)
            if entry is not None:  # else unregistered by an earlier event of this batch
                entry[0](entry[1], mask)

    def close_in_child(self) -> None:
        """In a forked child: close our copies of the epoll and the pipe.

        No ``epoll_ctl`` here: the epoll instance is shared with the master, so unregistering
        would blind the master. Closing our copies of fds leaves its set untouched.
        """
        self._handlers.clear()
        self._epoll.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _on_wake(self, _: None, __: int) -> None:
        self.woken = True
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
