"""The results of a run: one :class:`RunResult` per scenario, class and round, the table rows
built from them, and the JSON document (layout in docs/benchmarks.md)."""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import math
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import wrk
from .measure import BENCH_APPS, WSGI
from .scenarios import Options, Scenario
from .servers import WorkerSpec
from .stats import Row, median, ratio

#: Identifies the JSON layout; bump on incompatible changes.
SCHEMA = "gunicorn-fdpass-bench/1"
#: Longest failure text shown in a table cell.
CELL_FAILURE_CHARS = 48
#: Installed versions recorded with every report (None when missing).
PACKAGES = ("gunicorn", "h11", "uvicorn", "uvicorn-worker", "httptools", "uvloop")


@dataclass
class RunResult:
    """One scenario on one worker class."""

    scenario: str
    label: str
    worker_class: str
    threads: int | None
    app: str
    loadgen: str | None
    elapsed_s: float
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    round: int = 1  # with --repeat: which round (1-based)
    #: Why the class did not run at all (``not installed: ...``); not a failure.
    skipped: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (see :func:`report`)."""
        return {
            "scenario": self.scenario, "round": self.round,
            "worker": self.label, "worker_class": self.worker_class,
            "threads": self.threads, "app": self.app, "loadgen": self.loadgen,
            "elapsed_s": round(self.elapsed_s, 3), "metrics": json_safe(self.metrics),
            "error": self.error, "skipped": self.skipped,
        }


def cell_failure(error: str) -> str:
    """The short form of a failure shown in a table cell: its first line, bounded."""
    first = error.splitlines()[0] if error else "failed"
    if len(first) > CELL_FAILURE_CHARS:
        first = first[:CELL_FAILURE_CHARS - 3] + "..."
    return first


def table_rows(scenarios: Sequence[Scenario], results: Sequence[RunResult],
               labels: Sequence[str], baseline: str) -> list[Row]:
    """The comparison table's rows: every headline of every scenario that ran.

    With several rounds, a value is the median over the rounds, and each worker's ratios
    against ``baseline`` are taken within each round (see :class:`~.stats.Row`). A class
    with no successful round of a scenario gets that scenario's failure in its cells.
    """
    by_key = {(r.scenario, r.round, r.label): r for r in results
              if r.error is None and r.skipped is None}
    rounds = sorted({r.round for r in results})
    rows = []
    for scenario in scenarios:
        failures = _failures(scenario.name, results, labels, by_key)
        skipped = {r.label: skip_cell(r.skipped) for r in results
                   if r.scenario == scenario.name and r.skipped is not None}
        for h in scenario.headlines:
            per_round = {label: [_value(by_key.get((scenario.name, n, label)), h.value)
                                 for n in rounds] for label in labels}
            values = {label: median(per_round[label]) for label in labels}
            round_ratios = None
            if len(rounds) > 1:
                base = per_round.get(baseline, [None] * len(rounds))
                round_ratios = {label: [r for v, b in zip(per_round[label], base, strict=True)
                                        if (r := ratio(v, b)) is not None]
                                for label in labels}
            rows.append(Row(scenario.name, h.metric, h.unit, h.better, values, round_ratios,
                            failures or None, skipped or None, h.compare))
    return rows


def skip_cell(reason: str) -> str:
    """What the cells of a class that did not run say: ``not installed`` (the reason's
    first part; the whole reason is in the JSON and the summary)."""
    return reason.split(":", 1)[0].strip() or "skipped"


def _failures(scenario: str, results: Sequence[RunResult], labels: Sequence[str],
              succeeded: dict[tuple[str, int, str], RunResult]) -> dict[str, str]:
    """label -> failure text, for the classes whose every round of ``scenario`` failed."""
    found: dict[str, str] = {}
    ok = {label for (name, _, label) in succeeded if name == scenario}
    for r in results:
        if (r.scenario == scenario and r.error is not None and r.skipped is None
                and r.label in labels
                and r.label not in ok):
            found.setdefault(r.label, cell_failure(r.error))
    return found


def _value(result: RunResult | None, read: Callable[[dict[str, Any]], float | None]
           ) -> float | None:
    return None if result is None else read(result.metrics)


def report(args: argparse.Namespace, app: str, specs: Sequence[WorkerSpec], baseline: str,
           scenarios: Sequence[Scenario], results: Sequence[RunResult], options: Options,
           started: datetime.datetime, pinning: dict[str, list[int]] | None = None,
           kind: str = WSGI) -> dict[str, Any]:
    """The JSON document; its layout is described in docs/benchmarks.md."""
    labels = [s.label for s in specs]
    rows = table_rows(scenarios, results, labels, baseline)
    bench_app = BENCH_APPS[kind]
    skipped: dict[str, RunResult] = {}
    for r in results:
        if r.skipped is not None:
            skipped.setdefault(r.label, r)
    return {
        "schema": SCHEMA,
        "started": started.isoformat(timespec="seconds"),
        "app": app,
        "app_kind": kind,
        "bench_app": bench_app,
        "baseline": baseline,
        "machine": {
            "cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "gunicorn": _version("gunicorn"),
            "wrk": wrk.version(options.wrk_path) if options.wrk_path else None,
            # What decides the ASGI classes' speed: uvicorn's parser and every class's loop.
            "packages": {name: _version(name) for name in PACKAGES},
        },
        "settings": {
            "workers": args.workers, "repeat": args.repeat, "duration_s": options.duration_s,
            "warmup_s": options.warmup_s, "connections": options.connections,
            "path": options.path, "loadgen": options.loadgen,
            "throughput_loadgen": "wrk" if options.use_wrk() else (
                "builtin-open-loop" if options.rate > 0 else "builtin"),
            "rate": options.rate, "timeout_s": options.request_timeout_s,
            "slow_clients": options.slow_clients, "slow_deadline_s": options.slow_deadline_s,
            "hol_slow_ms": options.hol_slow_ms, "hol_slow_clients": options.hol_slow_clients,
            "hol_rate": options.hol_rate, "handoff_connections": options.handoff_connections,
            "queueing_path": options.queueing_path,
            "queueing_connections": options.queueing_connections,
            "balance_workers": options.balance_workers, "balance_path": options.balance_path,
            "balance_connections": options.balance_connections,
            "balance_burst": options.balance_burst, "balance_draws": options.balance_draws,
            "expect_status": str(options.expect),
            "pin_master": pinning,
            "gunicorn_args": list(args.gunicorn_arg),
        },
        "workers": [{"label": s.label, "worker_class": s.worker_class, "threads": s.threads}
                    for s in specs],
        "scenarios": [{"name": s.name, "title": s.title, "app": bench_app if s.uses_bench_app
                       else app} for s in scenarios],
        "results": [r.as_dict() for r in results],
        "failures": [{"scenario": r.scenario, "round": r.round, "worker": r.label,
                      "error": r.error} for r in results if r.error is not None],
        "skipped": [{"worker": label, "worker_class": r.worker_class, "reason": r.skipped}
                    for label, r in skipped.items()],
        "table": [_table_entry(row, baseline) for row in rows],
    }


def _table_entry(row: Row, baseline: str) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "scenario": row.scenario, "metric": row.metric, "unit": row.unit,
        "better": row.better, "values": json_safe(dict(row.values)),
        "ratios": json_safe(row.ratios(baseline)),
    }
    if row.round_ratios is not None:
        entry["round_ratios"] = json_safe({k: list(v) for k, v in row.round_ratios.items()})
    if row.failures:
        entry["failures"] = dict(row.failures)
    if row.skipped:
        entry["skipped"] = dict(row.skipped)
    if not row.compare:
        entry["compare"] = False
    return entry


def rows_from_report(doc: dict[str, Any]) -> list[Row]:
    """Rebuild the table rows from a report (e.g. one read back from JSON)."""
    return [Row(t["scenario"], t["metric"], t["unit"], t["better"], t["values"],
                t.get("round_ratios"), t.get("failures"), t.get("skipped"),
                t.get("compare", True))
            for t in doc["table"]]


def _version(distribution: str) -> str | None:
    """The installed version of ``distribution``, or None."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None, keys as strings, tuples as lists."""
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
