"""The master's report of its live numbers, with fake loggers: one debug line at most per
report and none while nothing changed; statsd and the stats file get everything."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gunicorn.instrument.statsd import Statsd

from gunicorn_fdpass.master.report import COUNTERS, GAUGES, Reporter


class FakeLog:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.warnings: list[str] = []

    def debug(self, msg: str, *args: Any, **_: Any) -> None:
        self.lines.append(msg % args)

    def warning(self, msg: str, *args: Any, **_: Any) -> None:
        self.warnings.append(msg % args)


class FakeStatsd(Statsd):
    """Gunicorn's statsd logger, minus its socket and its log handlers."""

    def __init__(self) -> None:  # no super(): no cfg, no socket
        self.prefix = ""
        self.dogstatsd_tags = ""
        self.packets: list[str] = []
        self.lines: list[str] = []

    def _sock_send(self, msg: str) -> None:  # type: ignore[override]
        self.packets.append(msg)

    def log(self, lvl: int, msg: str, *args: Any, **kwargs: Any) -> None:
        self.lines.append(msg % args)


def numbers(**changes: float) -> dict[str, float]:
    counts: dict[str, float] = dict.fromkeys(GAUGES + COUNTERS, 0)
    counts.update(queue_wait_avg_ms=0.0, refused=0, workers=2)
    counts.update(changes)
    return counts


def test_one_line_per_report_and_none_while_nothing_changes() -> None:
    log = FakeLog()
    reporter = Reporter(log)
    reporter.report(numbers(), {}, {}, None)
    assert len(log.lines) == 1  # the first report says where things stand
    reporter.report(numbers(), {}, {}, None)
    reporter.report(numbers(), {}, {}, None)
    assert len(log.lines) == 1  # idle: silent
    reporter.report(numbers(accepted=5, dispatched=5, busy=2, reserves=1, queued=3,
                            queue_wait_max_ms=1.25), {11: 1, 12: 1}, {11: 1}, None)
    assert len(log.lines) == 2  # a dozen numbers changed: still one line
    assert log.lines[-1] == ("fdpass queued=3 parked=0 waiting_for_head=0 busy=2 reserves=1 "
                             "workers=2 queue_wait_max_ms=1.2 waiting_for_body=0 lingering=0 "
                             "accepted+5 dispatched+5")
    reporter.report(numbers(accepted=5, dispatched=5, busy=2, reserves=1, queued=3,
                            queue_wait_max_ms=1.25), {11: 1, 12: 1}, {11: 1}, None)
    assert len(log.lines) == 2  # the same again: silent
    reporter.report(numbers(accepted=5, dispatched=5, queue_wait_max_ms=1.25), {}, {}, None)
    assert log.lines[-1].startswith("fdpass queued=0 parked=0 waiting_for_head=0 busy=0 ")
    reporter.report(numbers(accepted=6, dispatched=5, queue_wait_max_ms=1.25), {}, {}, None)
    assert log.lines[-1].endswith(" accepted+1")  # only a counter moved: still worth a line


def test_statsd_gets_every_number_and_the_log_one_line() -> None:
    statsd = FakeStatsd()
    reporter = Reporter(statsd)
    reporter.report(numbers(accepted=3, busy=2, reserves=1), {11: 1, 12: 1}, {12: 1}, None)
    sent = {p.split(":")[0]: p.split(":", 1)[1] for p in statsd.packets}
    for name in GAUGES:
        assert sent[f"fdpass.{name}"].endswith("|g"), name
    assert sent["fdpass.busy"] == "2|g" and sent["fdpass.reserves"] == "1|g"
    assert sent["fdpass.accepted"].startswith("3|c")
    assert "fdpass.dispatched" not in sent  # a counter that did not move is not sent
    assert sent["fdpass.worker.11.busy"] == "1|g"
    assert len(statsd.lines) == 1
    statsd.packets.clear()
    reporter.report(numbers(accepted=3, busy=2, reserves=1), {11: 1, 12: 1}, {12: 1}, None)
    assert {p.split(":")[0] for p in statsd.packets} >= {f"fdpass.{n}" for n in GAUGES}
    assert not any(p.startswith("fdpass.accepted:") for p in statsd.packets)
    assert len(statsd.lines) == 1  # gauges still go out every interval; the log is silent


def test_stats_file_has_every_number(tmp_path: Path) -> None:
    path = tmp_path / "stats.json"
    reporter = Reporter(FakeLog(), wall_clock=lambda: 1234.5)
    reporter.report(numbers(busy=2, reserves=1), {11: 1, 12: 1}, {11: 1, 12: 0}, str(path))
    stats = json.loads(path.read_text())
    assert (stats["busy"], stats["reserves"], stats["time"]) == (2, 1, 1234.5)
    assert stats["busy_by_worker"] == {"11": 1, "12": 1}
    assert stats["reserves_by_worker"] == {"11": 1, "12": 0}
    assert set(GAUGES + COUNTERS) <= stats.keys()


def test_unwritable_stats_file_is_a_warning(tmp_path: Path) -> None:
    log = FakeLog()
    Reporter(log).report(numbers(), {}, {}, str(tmp_path / "missing" / "stats.json"))
    assert log.warnings and "FDPASS_STATS_FILE" in log.warnings[0]
