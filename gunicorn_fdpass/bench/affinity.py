"""``--pin-master``: the master on one CPU, its workers and the load generator on the others.

Every connection of ``gunicorn_fdpass.Worker`` passes through the single-threaded master, so
on a machine with enough cores the master's own speed is the ceiling. On a small machine
everything shares every core and that ceiling never shows; pinning gives the master one CPU
to itself (shared with nothing of the benchmark) and everything else the rest, so the master
saturates first and the handoff rate shows what one master core can do.

The bench process pins itself (its main thread, so the built-in load generator and the
``wrk`` it starts inherit the mask) for the whole run. Workers forked before the master was
pinned keep the mask the master had then, and a worker forked later inherits the master's CPU,
so :func:`apply` pins the master and each worker again before every scenario, every thread
of each (``gthread`` starts its pool before we get to it). Each mask is read back from the
kernel and reported.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Pinning:
    """Which CPUs the master gets and which everything else gets."""

    master: frozenset[int]
    others: frozenset[int]

    @classmethod
    def split(cls, allowed: Iterable[int]) -> Pinning:
        """The lowest allowed CPU for the master, the rest for the others.

        Raises ValueError with fewer than two CPUs: there is nothing to separate.
        """
        cpus = sorted(set(allowed))
        if len(cpus) < 2:
            raise ValueError(f"--pin-master needs at least 2 CPUs, this process may use "
                             f"{len(cpus)} ({cpus})")
        return cls(frozenset(cpus[:1]), frozenset(cpus[1:]))

    def as_dict(self) -> dict[str, list[int]]:
        """JSON form: ``{"master": [0], "others": [1, ...]}``."""
        return {"master": sorted(self.master), "others": sorted(self.others)}


def tasks(pid: int) -> list[int]:
    """Thread ids of process ``pid`` (empty if it is gone)."""
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def pin_process(pid: int, cpus: frozenset[int]) -> list[int] | None:
    """Pin every thread of ``pid`` to ``cpus``; return the union of their masks read back
    from the kernel, or None if the process is gone."""
    seen: set[int] = set()
    found = False
    for tid in tasks(pid):
        try:
            os.sched_setaffinity(tid, cpus)
            seen |= os.sched_getaffinity(tid)
            found = True
        except (ProcessLookupError, FileNotFoundError):
            continue  # the thread ended meanwhile
    return sorted(seen) if found else None


def apply(pinning: Pinning, master_pid: int, worker_pids: Iterable[int]) -> dict[str, Any]:
    """Pin the master to its CPU and each worker to the others; the masks as read back."""
    workers: dict[str, list[int]] = {}
    for pid in worker_pids:
        mask = pin_process(pid, pinning.others)
        if mask is not None:
            workers[str(pid)] = mask
    return {"master": pin_process(master_pid, pinning.master), "workers": workers,
            "bench": sorted(os.sched_getaffinity(0))}


@contextlib.contextmanager
def pinned_self(cpus: frozenset[int] | None) -> Iterator[None]:
    """Run the block with this thread (and what it starts) on ``cpus``; restore after.

    ``None`` leaves the mask alone.
    """
    if cpus is None:
        yield
        return
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, saved)
