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

    def free(self) -> int:
        return max(0, self.capacity - self.busy)

    def over(self) -> bool:
        return self.busy > self.capacity

    def held(self) -> int:
        """Reserves handed to this worker and not yet started (a draining worker has none)."""
        return min(self.reserve, max(0, self.busy - self.capacity))


class Scheduler(Generic[W]):
    """Tracks each worker's capacity and busy slots and picks a worker for new work."""

    def __init__(self) -> None:
        self._workers: dict[W, _Slots] = {}
        self._picks = 0
        # Totals kept up to date on every change, since the master asks after every poll.
        self._free = 0
        self._over = 0
        self._held = 0

    def _count(self, slots: _Slots, sign: int) -> None:
        """Add (1) or remove (-1) one worker's share of the totals."""
        self._free += sign * slots.free()
        self._over += sign * slots.over()
        self._held += sign * slots.held()

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
            self._count(slots, -1)
            slots.busy += 1
            self._count(slots, 1)
            slots.last_pick = self._picks
        return best

    def release(self, worker: W) -> None:
        """One connection of ``worker`` finished (or was handed back)."""
        slots = self._workers.get(worker)
        if slots is not None and slots.busy > 0:
            self._count(slots, -1)
            slots.busy -= 1
            self._count(slots, 1)

    def busy(self, worker: W) -> int:
        """Connections currently counted against ``worker`` (0 if unknown)."""
        slots = self._workers.get(worker)
        return slots.busy if slots is not None else 0

    def reserves(self, worker: W) -> int:
        """Reserves ``worker`` holds: connections beyond its capacity, not started (0 if
        unknown). ``busy(worker) - reserves(worker)`` is its slots in use."""
        slots = self._workers.get(worker)
        return slots.held() if slots is not None else 0

    def free_slots(self) -> int:
        """Total free capacity over all workers (reserves not counted)."""
        return self._free

    def reserves_held(self) -> int:
        """Reserves waiting at busy workers, over all workers."""
        return self._held

    def overbooked(self) -> list[W]:
        """Workers holding more connections than they have slots: they hold a reserve."""
        if not self._over:
            return []
        return [w for w, s in self._workers.items() if s.over()]

    def __contains__(self, worker: object) -> bool:
        return worker in self._workers

    def __len__(self) -> int:
        return len(self._workers)
