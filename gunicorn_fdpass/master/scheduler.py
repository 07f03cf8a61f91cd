"""Which worker gets the next connection: the master's scheduling policy, pure and I/O free.

Policy: a worker with a free slot is eligible; among those, the least busy one wins (lowest
share of its capacity in use), and among equally busy ones the one that was picked longest
ago. The last rule spreads work evenly even when every worker is idle, instead of always
favouring the first worker as a kernel accept queue tends to.

Reserves: a worker may be given ``reserve`` connections beyond its capacity, but only while no
worker has a free slot. A reserve waits, unread, until its worker is free, so the worker goes on
without waiting for the master. It is not a promise: when another worker frees a slot first,
the master may take the reserve back (:meth:`Scheduler.overbooked` names who holds one; when
it does is the ``RESERVE_PATIENCE`` rule of :mod:`~gunicorn_fdpass.master.handoff`) and give
it to that worker, so no connection waits behind a slow request while a worker idles.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

W = TypeVar("W", bound=Hashable)


@dataclass(slots=True)
class _Slots:
    capacity: int
    reserve: int = 0
    busy: int = 0
    last_pick: int = 0

    def shares(self) -> tuple[int, int, int, int]:
        """This worker's part of the scheduler's totals: free slots, overbooked (0 or 1),
        reserves held, and connections it can still take (reserves included)."""
        return _shares(self.capacity, self.reserve, self.busy)


def _shares(capacity: int, reserve: int, busy: int) -> tuple[int, int, int, int]:
    # Conditional expressions, not min/max: this runs twice per connection.
    extra = busy - capacity  # > 0: the reserves it holds (a draining worker has none)
    if extra < 0:
        return -extra, 0, 0, reserve - extra
    over = 1 if extra else 0
    if extra < reserve:
        return 0, over, extra, reserve - extra
    return 0, over, reserve, 0


class Scheduler(Generic[W]):
    """Tracks each worker's capacity and busy slots and picks a worker for new work."""

    def __init__(self) -> None:
        self._workers: dict[W, _Slots] = {}
        self._picks = 0
        # Totals kept up to date on every change, since the master asks after every poll.
        self._free = 0
        self._over = 0
        self._held = 0
        self._open = 0

    def _count(self, slots: _Slots, sign: int) -> None:
        """Add (1) or remove (-1) one worker's share of the totals."""
        free, over, held, open_ = slots.shares()
        self._free += sign * free
        self._over += sign * over
        self._held += sign * held
        self._open += sign * open_

    def _shift(self, slots: _Slots, busy: int) -> None:
        """Set one worker's busy count and move the totals with it (once per connection,
        both ways: one call and no temporary objects beyond two tuples)."""
        capacity, reserve = slots.capacity, slots.reserve
        f0, o0, h0, p0 = _shares(capacity, reserve, slots.busy)
        f1, o1, h1, p1 = _shares(capacity, reserve, busy)
        slots.busy = busy
        self._free += f1 - f0
        self._over += o1 - o0
        self._held += h1 - h0
        self._open += p1 - p0

    def add(self, worker: W, capacity: int, reserve: int = 0) -> None:
        """A worker announced that it can serve ``capacity`` connections at once, and hold
        ``reserve`` more that wait for a free slot (see the module docstring)."""
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        if reserve < 0:
            raise ValueError(f"reserve must not be negative, got {reserve}")
        slots = self._workers.get(worker)
        if slots is None:
            slots = self._workers[worker] = _Slots(capacity, reserve)
        else:
            self._count(slots, -1)
            slots.capacity, slots.reserve = capacity, reserve
        self._count(slots, 1)

    def drain(self, worker: W) -> None:
        """The worker takes no new work; its busy slots still finish and are released."""
        slots = self._workers.get(worker)
        if slots is not None:
            self._count(slots, -1)
            slots.capacity = slots.reserve = 0
            self._count(slots, 1)

    def remove(self, worker: W) -> None:
        """The worker is gone; unknown workers are ignored."""
        slots = self._workers.pop(worker, None)
        if slots is not None:
            self._count(slots, -1)

    def pick(self, avoid: object = None) -> W | None:
        """Choose a worker for one connection and count it busy; None when all are full.

        A free slot first; only when there is none anywhere, a reserve. ``avoid`` (a worker
        that could not receive this connection) is chosen only when no other worker can
        take it, not even as a reserve.
        """
        if not self._open:
            return None
        best: W | None = None
        best_key: tuple[bool, bool, float, int, int] | None = None
        for worker, slots in self._workers.items():
            if slots.busy >= slots.capacity + slots.reserve:
                continue
            over = slots.busy >= slots.capacity
            key = (worker is avoid, over, slots.busy / slots.capacity, slots.busy,
                   slots.last_pick)
            if best_key is None or key < best_key:
                best, best_key = worker, key
        if best is not None:
            self._picks += 1
            slots = self._workers[best]
            self._shift(slots, slots.busy + 1)
            slots.last_pick = self._picks
        return best

    def release(self, worker: W) -> None:
        """One connection of ``worker`` finished (or was handed back)."""
        slots = self._workers.get(worker)
        if slots is not None and slots.busy > 0:
            self._shift(slots, slots.busy - 1)

    def busy(self, worker: W) -> int:
        """Connections currently counted against ``worker`` (0 if unknown)."""
        slots = self._workers.get(worker)
        return slots.busy if slots is not None else 0

    def reserves(self, worker: W) -> int:
        """Reserves ``worker`` holds: connections beyond its capacity, not started (0 if
        unknown). ``busy(worker) - reserves(worker)`` is its slots in use."""
        slots = self._workers.get(worker)
        return slots.shares()[2] if slots is not None else 0

    def free_slots(self) -> int:
        """Total free capacity over all workers (reserves not counted)."""
        return self._free

    def can_take(self) -> bool:
        """True if :meth:`pick` would name a worker (a free slot or a reserve somewhere)."""
        return self._open > 0

    def reserves_held(self) -> int:
        """Reserves waiting at busy workers, over all workers."""
        return self._held

    def overbooked(self) -> list[W]:
        """Workers holding more connections than they have slots: they hold a reserve."""
        if not self._over:
            return []
        return [w for w, s in self._workers.items() if s.busy > s.capacity]

    def __contains__(self, worker: object) -> bool:
        return worker in self._workers

    def __len__(self) -> int:
        return len(self._workers)
