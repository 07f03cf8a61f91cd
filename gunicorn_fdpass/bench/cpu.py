"""CPU time of the server under test, from ``/proc``: master, workers, and the whole machine.

Each throughput scenario samples, right before and right after its measured window, the
``utime + stime`` clock ticks (``/proc/<pid>/stat``, all threads of the process) of the master
and of each of its children (the workers), and the busy ticks of the whole machine
(``/proc/stat``). :func:`usage` turns two samples into microseconds per request and per
connection, and the ceiling the master's own cost implies: a single-threaded master spending
``m`` us on each request cannot pass more than ``1 s / m`` of them per second, however many
workers and cores there are.

The resolution is one clock tick (usually 10 ms) per process, so a master that did almost
nothing (``sync``, ``gthread``, or this package's ASGI master under keep-alive) reads 0 or a
stray tick or two; its ceiling is then unknown (None), not millions per second: one is given
only from :data:`CEILING_MIN_TICKS` ticks on.
A worker that exited within the window loses the ticks it spent there.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

#: Clock ticks per second of /proc's times.
TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
#: Fewest master ticks in a window for a ceiling: with 5, one tick of rounding moves it by at
#: most a fifth.
CEILING_MIN_TICKS = 5


def process_ticks(pid: int) -> int | None:
    """``utime + stime`` of process ``pid`` (every thread), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            text = fh.read()
    except OSError:
        return None
    return parse_stat(text)


def parse_stat(text: bytes) -> int:
    """``utime + stime`` from a ``/proc/<pid>/stat`` line.

    The command name (field 2) is in parentheses and may hold spaces or parentheses, so the
    fields are counted from the last ``)``: utime and stime are fields 14 and 15.
    """
    rest = text[text.rindex(b")") + 2:].split()
    return int(rest[11]) + int(rest[12])


def machine_busy_ticks() -> int | None:
    """Ticks every CPU of the machine spent on anything but idle and iowait (``/proc/stat``)."""
    try:
        with open("/proc/stat", "rb") as fh:
            first = fh.readline().split()
    except OSError:
        return None
    if not first or first[0] != b"cpu":
        return None
    values = [int(x) for x in first[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice: already in user/nice]
    return sum(values[:8]) - values[3] - values[4]


@dataclass(frozen=True)
class Sample:
    """Ticks of the master, of each worker, and of the machine at one moment."""

    master: int | None
    workers: dict[int, int] = field(default_factory=dict)
    machine: int | None = None


def sample(master_pid: int, worker_pids: Iterable[int]) -> Sample:
    """Read the ticks of ``master_pid``, each of ``worker_pids`` and the machine."""
    workers = {}
    for pid in worker_pids:
        ticks = process_ticks(pid)
        if ticks is not None:
            workers[pid] = ticks
    return Sample(process_ticks(master_pid), workers, machine_busy_ticks())


def _per(ticks: int | None, count: int) -> float | None:
    if ticks is None or count <= 0:
        return None
    return ticks * TICK_S * 1e6 / count


def usage(before: Sample, after: Sample, *, requests: int, connections: int
          ) -> dict[str, Any]:
    """CPU per request and per connection between two samples, in microseconds.

    Workers are counted from their first sample; one that appeared within the window (a
    restart) from zero.
    """
    master = (None if before.master is None or after.master is None
              else after.master - before.master)
    worker = sum(t - before.workers.get(pid, 0) for pid, t in after.workers.items())
    machine = (None if before.machine is None or after.machine is None
               else after.machine - before.machine)
    server = None if master is None else master + worker
    master_per_req = _per(master, requests)
    return {
        "tick_s": TICK_S,
        "requests": requests,
        "connections": connections,
        "master_ticks": master,
        "worker_ticks": worker,
        "machine_ticks": machine,
        "master_us_per_conn": _per(master, connections),
        "master_us_per_req": master_per_req,
        "worker_us_per_req": _per(worker, requests),
        "server_us_per_req": _per(server, requests),
        "machine_us_per_req": _per(machine, requests),
        "master_ceiling_per_s": (1e6 / master_per_req if master_per_req
                                 and master is not None and master >= CEILING_MIN_TICKS
                                 else None),
    }
