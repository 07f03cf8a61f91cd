"""Command line: ``python -m gunicorn_fdpass.bench [APP] [options]``.

Runs each selected scenario against one Gunicorn master per worker class, prints a progress
line per scenario and worker class to stderr, then the comparison table to stdout; optionally
writes JSON (``--json``), a Markdown table (``--markdown``) and PNG plots (``--plots``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from . import wrk
from .scenarios import BENCH_APP, SCENARIO_NAMES, SCENARIOS, Options, Scenario, Target
from .servers import Server, ServerError, WorkerSpec
from .stats import Row, format_markdown_table, format_table, format_value, median, ratio

#: Identifies the JSON layout; bump on incompatible changes.
SCHEMA = "gunicorn-fdpass-bench/1"
DEFAULT_APP = "examples.hello:app"
DEFAULT_CLASSES = "sync,gthread,gunicorn_fdpass.Worker"


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

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (see :func:`report`)."""
        return {
            "scenario": self.scenario, "round": self.round,
            "worker": self.label, "worker_class": self.worker_class,
            "threads": self.threads, "app": self.app, "loadgen": self.loadgen,
            "elapsed_s": round(self.elapsed_s, 3), "metrics": _json_safe(self.metrics),
            "error": self.error,
        }


#: Short names for the bundled examples: spec, and a file that must exist for it.
ALIASES: dict[str, tuple[str, str]] = {
    "hello": (DEFAULT_APP, "examples/hello.py"),
    "flask": ("examples.flask_app:app", "examples/flask_app.py"),
    "django": ("examples.django_project.wsgi:application", "examples/django_project/wsgi.py"),
}


def resolve_app(app: str, chdir: str | None) -> tuple[str, str]:
    """Map an alias (``hello``, ``flask``, ``django``) to ``(app spec, directory)``.

    The aliases name the bundled examples and need the repository root as the directory
    (``--chdir``, or the current one). Anything else is returned unchanged.
    """
    base = Path(chdir or os.getcwd()).resolve()
    if app in ALIASES:
        spec, needed = ALIASES[app]
        if not (base / needed).exists():
            raise SystemExit(f"{app}: {needed} not found under {base}; run from the "
                             "repository root, use --chdir, or give the app as module:callable")
        return spec, str(base)
    return app, str(base)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used by the docs)."""
    p = argparse.ArgumentParser(
        prog="python -m gunicorn_fdpass.bench",
        description="Compare Gunicorn worker classes (sync, gthread, gunicorn_fdpass.Worker, "
                    "...) on one WSGI app, side by side on 127.0.0.1, with ratios against sync.")
    p.add_argument("app", nargs="?", default=DEFAULT_APP,
                   help="WSGI app as module:callable, or hello / flask / django for the bundled "
                        f"examples (default {DEFAULT_APP})")
    p.add_argument("-w", "--workers", type=int, default=2, help="workers per server (2)")
    p.add_argument("--threads", type=int, default=4,
                   help="threads for gthread when not given as gthread@N (4)")
    p.add_argument("--classes", default=DEFAULT_CLASSES,
                   help="comma-separated worker classes, NAME or NAME@THREADS "
                        f"(default {DEFAULT_CLASSES})")
    p.add_argument("-k", "--worker-class", action="append", default=[], metavar="SPEC",
                   help="one more worker class to compare, NAME or NAME@THREADS (repeatable), "
                        "e.g. -k gunicorn_fdpass.Worker@4")
    p.add_argument("--baseline", default="sync",
                   help="column the ratios are computed against (default sync, else the first)")
    p.add_argument("-s", "--scenarios", default=",".join(SCENARIO_NAMES),
                   help=f"comma-separated subset of {','.join(SCENARIO_NAMES)}")
    p.add_argument("-d", "--duration", type=float, default=3.0,
                   help="seconds of measurement per scenario and worker class (3; wrk rounds "
                        "up to whole seconds)")
    p.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="run every scenario N times, the worker classes taking turns within "
                        "each round; the table shows medians and the range of the ratios "
                        "taken within each round (1)")
    p.add_argument("--warmup", type=float, default=0.5,
                   help="seconds of untimed load before each throughput scenario (0.5)")
    p.add_argument("-c", "--connections", type=int, default=16,
                   help="concurrent client connections for close/keepalive/fairness (16)")
    p.add_argument("--path", default="/", help="path requested from your app (/)")
    p.add_argument("--loadgen", choices=("auto", "wrk", "builtin"), default="auto",
                   help="throughput load generator: wrk when installed (auto), or the built-in "
                        "asyncio one; slow-clients and hol always use the built-in one")
    p.add_argument("--rate", type=float, default=0.0,
                   help="if > 0: close/keepalive/fairness/handoff use the built-in open loop at "
                        "this many requests/s, latency measured from the intended send time")
    p.add_argument("--timeout", type=float, default=5.0, help="per-request timeout, s (5)")
    p.add_argument("--slow-clients", type=int, default=8,
                   help="slow-clients: N silent and N half-sent connections held open (8)")
    p.add_argument("--slow-deadline", type=float, default=1.0,
                   help="slow-clients: an ordinary request counts if answered within this, s (1)")
    p.add_argument("--hol-slow-ms", type=int, default=250,
                   help="hol: duration of a slow request, ms (250)")
    p.add_argument("--hol-slow-clients", type=int, default=None,
                   help="hol: clients looping on slow requests (default: --workers)")
    p.add_argument("--hol-rate", type=float, default=50.0,
                   help="hol: fast requests per second, open loop (50)")
    p.add_argument("--handoff-connections", type=int, default=64,
                   help="handoff: concurrent one-request connections (64)")
    p.add_argument("--chdir", default=None,
                   help="directory the app is imported from (default: the current one)")
    p.add_argument("--gunicorn-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for every gunicorn command line (repeatable), "
                        "e.g. --gunicorn-arg=--keep-alive=5")
    p.add_argument("--json", dest="json_path", default=None, help="write the results as JSON")
    p.add_argument("--markdown", default=None, help="write the table as Markdown")
    p.add_argument("--from-json", default=None, metavar="PATH",
                   help="run nothing: render the table, --markdown and --plots of a report "
                        "written earlier with --json")
    p.add_argument("--plots", default=None, metavar="DIR",
                   help="write PNG plots into DIR (needs matplotlib: pip install "
                        "'gunicorn-fdpass[plots]')")
    return p


def _worker_specs(args: argparse.Namespace) -> list[WorkerSpec]:
    texts = [t for t in args.classes.split(",") if t.strip()] + list(args.worker_class)
    specs: list[WorkerSpec] = []
    for text in texts:
        spec = WorkerSpec.parse(text, default_threads=args.threads)
        if spec not in specs:
            specs.append(spec)
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise SystemExit(f"worker classes with the same column name: {labels}")
    if not specs:
        raise SystemExit("no worker class to compare")
    return specs


def _options(args: argparse.Namespace) -> Options:
    wrk_path = wrk.available() if args.loadgen != "builtin" else None
    if args.loadgen == "wrk" and wrk_path is None:
        raise SystemExit("--loadgen wrk: wrk is not installed (apt install wrk)")
    return Options(
        duration_s=args.duration, warmup_s=args.warmup, connections=args.connections,
        path=args.path, loadgen=args.loadgen, wrk_path=wrk_path,
        wrk_threads=min(2, os.cpu_count() or 1), rate=args.rate,
        request_timeout_s=args.timeout, slow_clients=args.slow_clients,
        slow_deadline_s=args.slow_deadline, hol_slow_clients=args.hol_slow_clients or args.workers,
        hol_slow_ms=args.hol_slow_ms, hol_rate=args.hol_rate,
        handoff_connections=args.handoff_connections)


def _validate(args: argparse.Namespace) -> None:
    for name in ("workers", "threads", "connections", "slow_clients", "handoff_connections",
                 "repeat"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("duration", "slow_deadline", "timeout", "hol_rate"):
        if not getattr(args, name) > 0:
            raise SystemExit(f"--{name.replace('_', '-')} must be positive")
    if args.warmup < 0 or args.rate < 0:
        raise SystemExit("--warmup and --rate must not be negative")


def _progress(out: TextIO, n: int, total: int, result: RunResult, scenario: Scenario,
              rounds: int) -> None:
    if result.error is not None:
        summary = f"FAILED: {result.error.splitlines()[0][:120]}"
    else:
        parts = []
        for h in scenario.headlines:
            value = h.value(result.metrics)
            unit = "" if h.unit in ("", "%") else f" {h.unit}"
            parts.append(f"{h.metric} {format_value(value, h.unit)}{unit}")
        errors = result.metrics.get("errors") or {}
        if errors:
            parts.append("errors " + ",".join(f"{k}={v}" for k, v in errors.items()))
        summary = ", ".join(parts)
    width = len(str(total))
    name = result.scenario if rounds == 1 else f"{result.scenario} {result.round}/{rounds}"
    out.write(f"[{n:>{width}}/{total}] {name:<12} {result.label:<12} {summary} "
              f"({result.loadgen or '-'}, {result.elapsed_s:.1f}s)\n")
    out.flush()


def run(args: argparse.Namespace, progress: TextIO) -> dict[str, Any]:
    """Run the benchmark described by ``args``; return the JSON-ready report."""
    _validate(args)
    specs = _worker_specs(args)
    options = _options(args)
    app, cwd = resolve_app(args.app, args.chdir)
    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIO_NAMES]
    if unknown or not names:
        raise SystemExit(f"unknown scenarios {unknown}; choose from {','.join(SCENARIO_NAMES)}")
    chosen = [s for s in SCENARIOS if s.name in names]
    baseline = args.baseline if args.baseline in [s.label for s in specs] else specs[0].label
    started = datetime.datetime.now(datetime.timezone.utc)
    # Scenarios grouped by the app they run, so each group needs one server per class.
    groups: dict[tuple[str, str], list[Scenario]] = {}
    for scenario in chosen:
        key = (BENCH_APP, cwd) if scenario.uses_bench_app else (app, cwd)
        groups.setdefault(key, []).append(scenario)
    rounds = args.repeat
    total = len(chosen) * len(specs) * rounds
    done = 0
    results: list[RunResult] = []
    for (group_app, group_cwd), scenarios in groups.items():
        servers = _start_servers(group_app, group_cwd, specs, args, progress)
        try:
            for scenario in scenarios:
                # The classes take turns within each round, so that a slow phase of a noisy
                # machine hits all of them rather than the one that happened to run then.
                for round_no in range(1, rounds + 1):
                    for spec in specs:
                        server = servers.get(spec)
                        result = _run_one(scenario, spec, server, group_app, options, args)
                        result.round = round_no
                        if result.error is not None and server is not None:
                            servers[spec] = _restart(server, progress)
                        results.append(result)
                        done += 1
                        _progress(progress, done, total, result, scenario, rounds)
        finally:
            for server in servers.values():
                if server is not None:
                    server.stop()
    return report(args, app, specs, baseline, chosen, results, options, started)


def _start_servers(app: str, cwd: str, specs: Sequence[WorkerSpec], args: argparse.Namespace,
                   progress: TextIO) -> dict[WorkerSpec, Server | None]:
    servers: dict[WorkerSpec, Server | None] = {}
    for spec in specs:
        server = Server(app, spec, args.workers, extra_args=args.gunicorn_arg, cwd=cwd)
        try:
            server.start()
        except ServerError as exc:
            progress.write(f"could not start {spec.label} ({app}): {exc}\n")
            servers[spec] = None
            continue
        servers[spec] = server
    return servers


def _restart(server: Server, progress: TextIO) -> Server | None:
    """After a failed scenario: keep the server if it answers, else start a fresh one."""
    try:
        if server.wait_healthy(5.0):
            return server
    except ServerError:
        pass
    server.stop()
    fresh = Server(server.app, server.spec, server.workers, extra_args=server.extra_args,
                   cwd=server.cwd)
    try:
        fresh.start()
    except ServerError as exc:
        progress.write(f"could not restart {server.spec.label}: {exc}\n")
        return None
    return fresh


def _run_one(scenario: Scenario, spec: WorkerSpec, server: Server | None, app: str,
             options: Options, args: argparse.Namespace) -> RunResult:
    result = RunResult(scenario.name, spec.label, spec.worker_class, spec.threads, app, None, 0.0)
    if server is None:
        result.error = "server did not start"
        return result
    t0 = time.monotonic()
    try:
        # A previous scenario may have left workers busy (e.g. with slow clients).
        if not server.wait_healthy(10.0):
            raise ServerError("server does not answer before the scenario")
        measurement = scenario.run(Target(server.port, server.worker_pids), options)
        result.loadgen = measurement.loadgen
        result.metrics = measurement.metrics
    except (ServerError, wrk.WrkError, OSError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    result.elapsed_s = time.monotonic() - t0
    return result


def table_rows(scenarios: Sequence[Scenario], results: Sequence[RunResult],
               labels: Sequence[str], baseline: str) -> list[Row]:
    """The comparison table's rows: every headline of every scenario that ran.

    With several rounds, a value is the median over the rounds, and each worker's ratios
    against ``baseline`` are taken within each round (see :class:`~.stats.Row`).
    """
    by_key = {(r.scenario, r.round, r.label): r for r in results if r.error is None}
    rounds = sorted({r.round for r in results})
    rows = []
    for scenario in scenarios:
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
            rows.append(Row(scenario.name, h.metric, h.unit, h.better, values, round_ratios))
    return rows


def _value(result: RunResult | None, read: Callable[[dict[str, Any]], float | None]
           ) -> float | None:
    return None if result is None else read(result.metrics)


def report(args: argparse.Namespace, app: str, specs: Sequence[WorkerSpec], baseline: str,
           scenarios: Sequence[Scenario], results: Sequence[RunResult], options: Options,
           started: datetime.datetime) -> dict[str, Any]:
    """The JSON document; its layout is described in docs/benchmarks.md."""
    labels = [s.label for s in specs]
    rows = table_rows(scenarios, results, labels, baseline)
    return {
        "schema": SCHEMA,
        "started": started.isoformat(timespec="seconds"),
        "app": app,
        "bench_app": BENCH_APP,
        "baseline": baseline,
        "machine": {
            "cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "gunicorn": _gunicorn_version(),
            "wrk": wrk.version(options.wrk_path) if options.wrk_path else None,
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
            "gunicorn_args": list(args.gunicorn_arg),
        },
        "workers": [{"label": s.label, "worker_class": s.worker_class, "threads": s.threads}
                    for s in specs],
        "scenarios": [{"name": s.name, "title": s.title, "app": BENCH_APP if s.uses_bench_app
                       else app} for s in scenarios],
        "results": [r.as_dict() for r in results],
        "table": [{
            "scenario": row.scenario, "metric": row.metric, "unit": row.unit,
            "better": row.better, "values": _json_safe(dict(row.values)),
            "ratios": _json_safe(row.ratios(baseline)),
            **({} if row.round_ratios is None else
               {"round_ratios": _json_safe({k: list(v) for k, v in row.round_ratios.items()})}),
        } for row in rows],
    }


def rows_from_report(doc: dict[str, Any]) -> list[Row]:
    """Rebuild the table rows from a report (e.g. one read back from JSON)."""
    return [Row(t["scenario"], t["metric"], t["unit"], t["better"], t["values"],
                t.get("round_ratios")) for t in doc["table"]]


def _gunicorn_version() -> str | None:
    try:
        import gunicorn
    except ImportError:
        return None
    return str(gunicorn.__version__)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (1 if any scenario failed)."""
    args = build_parser().parse_args(argv)
    progress = sys.stderr
    if args.from_json:
        doc = json.loads(Path(args.from_json).read_text())
        if doc.get("schema") != SCHEMA:
            raise SystemExit(f"{args.from_json}: not a {SCHEMA} report")
        args.json_path = None
    else:
        doc = run(args, progress)
    labels = [w["label"] for w in doc["workers"]]
    rows = rows_from_report(doc)
    print(format_table(rows, labels, doc["baseline"]))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(doc, indent=2) + "\n")
        progress.write(f"wrote {args.json_path}\n")
    if args.markdown:
        Path(args.markdown).write_text(format_markdown_table(rows, labels, doc["baseline"])
                                       + "\n")
        progress.write(f"wrote {args.markdown}\n")
    if args.plots:
        from . import plots

        written = plots.write_plots(doc, Path(args.plots))
        if written is None:
            progress.write("plots skipped: matplotlib is not installed "
                           "(pip install 'gunicorn-fdpass[plots]')\n")
        else:
            for path in written:
                progress.write(f"wrote {path}\n")
    failed = [r for r in doc["results"] if r["error"]]
    return 1 if failed else 0
