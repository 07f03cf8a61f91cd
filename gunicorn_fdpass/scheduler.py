"""Which worker gets the next connection: the master's scheduling policy, pure and I/O free.

Policy: only a worker with a free slot is eligible; among those, the least busy one wins
(lowest share of its capacity in use), and among equally busy ones the one that was picked
longest ago. The last rule spreads work evenly even when every worker is idle, instead of
always favouring the first worker as a kernel accept queue tends to.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

W = TypeVar("W", bound=Hashable)


@dataclass(slots=True)
class _Slots:
    capacity: int
    busy: int = 0
    last_pick: int = 0


class Scheduler(Generic[W]):
    """Tracks each worker's capacity and busy slots and picks a worker for new work."""

    def __init__(self) -> None:
        self._workers: dict[W, _Slots] = {}
        self._picks = 0

    def add(self, worker: W, capacity: int) -> None:
        """A worker announced that it can serve ``capacity`` connections at once."""
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        slots = self._workers.get(worker)
        if slots is None:
            self._workers[worker] = _Slots(capacity)
        else:
            slots.capacity = capacity

    def drain(self, worker: W) -> None:
        """The worker takes no new work; its busy slots still finish and are released."""
        slots = self._workers.get(worker)
        if slots is not None:
            slots.capacity = 0

    def remove(self, worker: W) -> None:
        """The worker is gone; unknown workers are ignored."""
        self._workers.pop(worker, None)

    def pick(self) -> W | None:
        """Choose a worker for one connection and count it busy; None when all are full."""
        best: W | None = None
        best_key: tuple[float, int, int] | None = None
        for worker, slots in self._workers.items():
            if slots.busy >= slots.capacity:
                continue
            key = (slots.busy / slots.capacity, slots.busy, slots.last_pick)
            if best_key is None or key < best_key:
                best, best_key = worker, key
        if best is not None:
            self._picks += 1
            slots = self._workers[best]
            slots.busy += 1
            slots.last_pick = self._picks
        return best

    def release(self, worker: W) -> None:
        """One connection of ``worker`` finished (or was handed back)."""
        slots = self._workers.get(worker)
        if slots is not None and slots.busy > 0:
            slots.busy -= 1

    def busy(self, worker: W) -> int:
        """Connections currently counted against ``worker`` (0 if unknown)."""
        slots = self._workers.get(worker)
        return slots.busy if slots is not None else 0

    def free_slots(self) -> int:
        """Total free capacity over all workers."""
        return sum(max(0, s.capacity - s.busy) for s in self._workers.values())

    def __contains__(self, worker: object) -> bool:
        return worker in self._workers

    def __len__(self) -> int:
        return len(self._workers)
