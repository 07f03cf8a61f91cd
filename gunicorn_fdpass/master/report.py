"""The master's live numbers, once per interval: statsd, one debug log line, the stats file.

Statsd and the stats file get the full set every interval. The log gets one line at most per
interval, at debug level, and none while nothing changed, so ``--log-level debug`` stays
readable on an idle server.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

from gunicorn.instrument.statsd import Statsd

#: Numbers that describe the moment (statsd gauges). ``busy`` counts slots serving a
#: connection; ``reserves`` connections waiting unread at a busy single-slot worker;
#: ``waiting_for_body`` requests whose small body is still arriving; ``lingering`` answered
#: connections the master reads and drops input from before closing them.
GAUGES: Final = ("queued", "parked", "waiting_for_head", "busy", "reserves", "workers",
                 "queue_wait_max_ms", "waiting_for_body", "lingering")
#: Totals since the start; statsd and the log get what was added since the last report.
#: ``rejected``: answered by the master at once (bytes that cannot begin a request, a TLS
#: handshake on a plain port, a bad or forbidden PROXY header).
COUNTERS: Final = ("accepted", "dispatched", "shed", "timed_out", "requeued", "evicted",
                   "rejected")


class Reporter:
    """Publishes one report of the dispatcher's numbers at a time (see the module docstring)."""

    __slots__ = ("_last", "_logged", "_wall_clock", "log")

    def __init__(self, log: Any, wall_clock: Callable[[], float] = time.time) -> None:
        self.log = log
        self._wall_clock = wall_clock
        self._last: Mapping[str, float] = {}  # the numbers of the previous report
        self._logged: tuple[float, ...] | None = None  # the gauges of the last log line

    def report(self, counts: Mapping[str, float], busy_by_worker: Mapping[int, int],
               reserves_by_worker: Mapping[int, int], stats_file: str | None) -> None:
        """Publish ``counts`` (:meth:`Dispatcher.counts`) and the per-worker numbers."""
        deltas = {name: counts[name] - self._last.get(name, 0) for name in COUNTERS}
        self._last = dict(counts)
        if isinstance(self.log, Statsd):
            self._send_metrics(self.log, counts, deltas, busy_by_worker)
        self._log_line(counts, deltas)
        if stats_file:
            self._write_stats_file(stats_file, {
                **counts, "busy_by_worker": dict(busy_by_worker),
                "reserves_by_worker": dict(reserves_by_worker), "pid": os.getpid(),
                "time": self._wall_clock()})

    @staticmethod
    def _send_metrics(statsd: Statsd, counts: Mapping[str, float],
                      deltas: Mapping[str, float], busy_by_worker: Mapping[int, int]) -> None:
        # Straight to statsd: logging each number (Gunicorn's ``extra`` metrics) would put
        # a dozen lines a second into a debug log.
        for name in GAUGES:
            statsd.gauge(f"fdpass.{name}", counts[name])
        for name, delta in deltas.items():
            if delta:
                statsd.increment(f"fdpass.{name}", delta)
        for pid, n in busy_by_worker.items():
            statsd.gauge(f"fdpass.worker.{pid}.busy", n)

    def _log_line(self, counts: Mapping[str, float], deltas: Mapping[str, float]) -> None:
        gauges = tuple(counts[name] for name in GAUGES)
        if gauges == self._logged and not any(deltas.values()):
            return  # nothing changed since the last line
        self._logged = gauges
        parts = [f"{name}={_number(value)}" for name, value in zip(GAUGES, gauges, strict=True)]
        parts += [f"{name}+{_number(delta)}" for name, delta in deltas.items() if delta]
        self.log.debug("fdpass %s", " ".join(parts))

    def _write_stats_file(self, path: str, numbers: dict[str, Any]) -> None:
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w") as fh:
                json.dump(numbers, fh)
            os.replace(tmp, path)  # readers never see a half-written file
        except OSError as exc:
            self.log.warning("cannot write FDPASS_STATS_FILE %s: %s", path, exc)


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:.1f}"
