"""Command line: ``python -m gunicorn_fdpass.bench [APP] [options]``.

Runs each selected scenario against one Gunicorn master per worker class, prints a progress
line per scenario and worker class to stderr, then the comparison table to stdout; optionally
writes JSON (``--json``), a Markdown table (``--markdown``) and PNG plots (``--plots``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from . import affinity, expect, wrk
from .choose import (
    DEFAULT_APP,
    DEFAULT_BASELINE,
    DEFAULT_CLASSES,
    choose,
    resolve_app,
    skip_summary,
)
from .measure import ASGI, ASGI_BENCH_APP, BENCH_APPS, WSGI
from .report import SCHEMA, RunResult, report, rows_from_report, table_rows
from .runner import Plan, execute
from .scenarios import QUEUEING_PATH, SCENARIO_NAMES, SCENARIOS, Options, default_names
from .stats import format_markdown_table, format_table

__all__ = ["DEFAULT_APP", "SCENARIOS", "SCHEMA", "RunResult", "build_parser", "main",
           "resolve_app", "run", "table_rows"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used by the docs)."""
    p = argparse.ArgumentParser(
        prog="python -m gunicorn_fdpass.bench",
        description="Compare Gunicorn worker classes on one app, side by side on 127.0.0.1: "
                    "a WSGI app under sync, gthread and gunicorn_fdpass.Worker (ratios "
                    "against sync), an ASGI app under asgi, uvicorn_worker.UvicornWorker, "
                    "uvicorn_worker.UvicornH11Worker and gunicorn_fdpass.ASGIWorker (ratios "
                    "against asgi). A class that cannot be imported is skipped: its cells "
                    "read 'not installed'.",
        epilog="The throughput scenarios (close, keepalive, fairness, handoff) also show the "
               "CPU time of each class's master and workers from /proc: master us per "
               "connection (or per request with keep-alive), worker and total us per request, "
               "and the rate the master's own cost allows (1 s / master us). Exit status 1 "
               "if any scenario failed: a server that did not start, a load generator error, "
               "or responses outside --expect-status; its cells then read 'FAILED: ...' "
               "(e.g. 'FAILED: 7017 x 404 on /') and a summary follows the table on stderr.")
    p.add_argument("app", nargs="?", default=None,
                   help="WSGI or ASGI app as module:callable, or hello / flask / django for "
                        f"the bundled examples (default {DEFAULT_APP}; with --asgi "
                        f"{ASGI_BENCH_APP})")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--asgi", action="store_true",
                      help="the app is ASGI: compare the ASGI worker classes (found by "
                           "importing the app when neither --asgi nor --wsgi is given)")
    kind.add_argument("--wsgi", action="store_true",
                      help="the app is WSGI: compare the WSGI worker classes")
    p.add_argument("-w", "--workers", type=int, default=2, help="workers per server (2)")
    p.add_argument("--threads", type=int, default=4,
                   help="threads for gthread when not given as gthread@N (4)")
    p.add_argument("--classes", default=None,
                   help="comma-separated worker classes, NAME or NAME@THREADS (default "
                        f"{DEFAULT_CLASSES[WSGI]}; for an ASGI app {DEFAULT_CLASSES[ASGI]})")
    p.add_argument("-k", "--worker-class", action="append", default=[], metavar="SPEC",
                   help="one more worker class to compare, NAME or NAME@THREADS (repeatable), "
                        "e.g. -k gunicorn_fdpass.Worker@4")
    p.add_argument("--baseline", default=None,
                   help=f"column the ratios are computed against (default "
                        f"{DEFAULT_BASELINE[WSGI]}, for an ASGI app {DEFAULT_BASELINE[ASGI]}; "
                        "else the first class that runs)")
    p.add_argument("-s", "--scenarios", default=None,
                   help=f"comma-separated subset of {','.join(SCENARIO_NAMES)} (default: "
                        f"{','.join(default_names(WSGI))}; for an ASGI app also balance)")
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
                        "asyncio one; slow-clients, hol and queueing always use the "
                        "built-in one")
    p.add_argument("--rate", type=float, default=0.0,
                   help="if > 0: close/keepalive/fairness/handoff use the built-in open loop at "
                        "this many requests/s, latency measured from the intended send time")
    p.add_argument("--timeout", type=float, default=5.0, help="per-request timeout, s (5)")
    p.add_argument("--slow-clients", type=int, default=8,
                   help="slow-clients: N silent connections, N half-sent heads and N slow "
                        "4 KB bodies held open (8)")
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
    p.add_argument("--queueing-path", default=QUEUEING_PATH,
                   help="queueing: the bench app's route every request asks for "
                        f"(default {QUEUEING_PATH}: a 5 ms sleep; /cpu?ms=2 burns 2 ms of CPU)")
    p.add_argument("--queueing-connections", type=int, default=16,
                   help="queueing: keep-alive connections, more than the servers' slots (16)")
    p.add_argument("--balance-workers", type=int, default=4,
                   help="balance: workers of its servers (4)")
    p.add_argument("--balance-path", default="/cpu?ms=1",
                   help="balance: the bench app's route, CPU-bound (/cpu?ms=1)")
    p.add_argument("--balance-connections", type=int, default=8,
                   help="balance: keep-alive connections opened in each draw (8)")
    p.add_argument("--balance-burst", type=int, default=4,
                   help="balance: connections opened at once, a burst (4)")
    p.add_argument("--balance-draws", type=int, default=3,
                   help="balance: draws of new connections, each lasting --duration (3)")
    p.add_argument("--expect-status", type=_status_set, default=expect.SUCCESS,
                   metavar="LIST",
                   help="statuses of your app that count as success, codes or classes, "
                        "e.g. 200,404 or 2xx,3xx (default 2xx); any other response fails the "
                        "scenario (the bench app's scenarios always expect 2xx)")
    p.add_argument("--pin-master", action="store_true",
                   help="pin each master to the first CPU, its workers and the load generator "
                        "to the others, so that the master's own ceiling shows (2+ CPUs)")
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


def _status_set(text: str) -> expect.StatusSet:
    try:
        return expect.StatusSet.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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
        handoff_connections=args.handoff_connections, expect=args.expect_status,
        queueing_path=args.queueing_path, queueing_connections=args.queueing_connections,
        balance_workers=args.balance_workers, balance_path=args.balance_path,
        balance_connections=args.balance_connections, balance_burst=args.balance_burst,
        balance_draws=args.balance_draws)


def _validate(args: argparse.Namespace) -> None:
    for name in ("workers", "threads", "connections", "slow_clients", "handoff_connections",
                 "queueing_connections", "repeat", "balance_workers", "balance_connections",
                 "balance_burst", "balance_draws"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("duration", "slow_deadline", "timeout", "hol_rate"):
        if not getattr(args, name) > 0:
            raise SystemExit(f"--{name.replace('_', '-')} must be positive")
    if args.warmup < 0 or args.rate < 0:
        raise SystemExit("--warmup and --rate must not be negative")


def _pinning(args: argparse.Namespace) -> affinity.Pinning | None:
    if not args.pin_master:
        return None
    try:
        return affinity.Pinning.split(os.sched_getaffinity(0))
    except ValueError as exc:
        raise SystemExit(str(exc)) from None


def run(args: argparse.Namespace, progress: TextIO) -> dict[str, Any]:
    """Run the benchmark described by ``args``; return the JSON-ready report."""
    _validate(args)
    options = _options(args)
    pinning = _pinning(args)
    c = choose(args, progress)
    started = datetime.datetime.now(datetime.timezone.utc)
    plan = Plan(c.app, c.cwd, c.specs, c.scenarios, options, args.workers, args.repeat,
                list(args.gunicorn_arg), pinning, BENCH_APPS[c.kind], c.skipped)
    results = execute(plan, progress)
    return report(args, c.app, c.specs, c.baseline, c.scenarios, results, options, started,
                  None if pinning is None else pinning.as_dict(), c.kind)


def failure_summary(doc: dict[str, Any]) -> list[str]:
    """One line per scenario and class that failed, and what to do about wrong statuses."""
    lines: list[str] = []
    seen: set[tuple[str, str, str]] = set()
    user_paths: list[str] = []
    # Wrong statuses on the user's app deserve a hint; on the bench app they are a fault.
    user_scenarios = {s["name"] for s in doc["scenarios"] if s["app"] == doc["app"]}
    for r in doc["results"]:
        if not r["error"]:
            continue
        key = (r["scenario"], r["worker"], r["error"].splitlines()[0])
        if key not in seen:
            seen.add(key)
            rounds = sum(1 for x in doc["results"] if x["scenario"] == r["scenario"]
                         and x["worker"] == r["worker"] and x["error"]
                         and x["error"].splitlines()[0] == key[2])
            where = f" ({rounds} of {doc['settings']['repeat']} rounds)" if (
                doc["settings"]["repeat"] > 1) else ""
            lines.append(f"FAILED: {r['scenario']} on {r['worker']}{where}: {key[2][:200]}")
        if r["scenario"] in user_scenarios:
            user_paths += list((r["metrics"] or {}).get("unexpected_statuses") or {})
    if user_paths:
        expected = doc["settings"].get("expect_status") or str(expect.SUCCESS)
        lines.append("hint: " + expect.hint(user_paths, expect.StatusSet.parse(expected)))
    return lines


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
    for line in skip_summary(doc.get("skipped") or []):
        progress.write(line + "\n")
    summary = failure_summary(doc)
    for line in summary:
        progress.write(line + "\n")
    return 1 if summary else 0
