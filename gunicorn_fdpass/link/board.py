"""A few bytes of memory the master shares with its workers: how much work waits for a worker.

The master writes it after every round of its loop; a worker reads it, without a system call,
when it could go on with the next request on the connection it holds. If anything waits (in
the master's queue, or as a reserve unread in some worker's inbox), that work arrived first, so
the worker hands its connection back instead and the master serves requests in the order they
arrived (first come, first served across connections).

An anonymous shared mapping made in the master before the workers fork: it is no file
descriptor, so it needs no closing in a worker, and a worker forked later shares it too.
"""

from __future__ import annotations

import mmap
import struct
from typing import Final

_COUNT: Final = struct.Struct("=q")


class WaitingBoard:
    """How many requests wait for a worker, as the master last published it."""

    __slots__ = ("_mem", "_published")

    def __init__(self) -> None:
        # mmap(-1, ...) is MAP_SHARED | MAP_ANONYMOUS on Linux: shared with forked children.
        self._mem = mmap.mmap(-1, _COUNT.size)
        self._published = 0

    def publish(self, waiting: int) -> None:
        """In the master: ``waiting`` requests wait for a worker now."""
        if waiting != self._published:  # most rounds change nothing: skip the write
            self._published = waiting
            _COUNT.pack_into(self._mem, 0, waiting)

    def waiting(self) -> int:
        """In a worker: how many requests the master said wait for a worker."""
        return int(_COUNT.unpack_from(self._mem, 0)[0])
