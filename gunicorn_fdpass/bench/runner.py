"""Running a plan: start one server per worker class and app, run every scenario against each
in turn, check the statuses each got, and report progress."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TextIO

from . import affinity, expect, wrk
from .report import RunResult
from .scenarios import BENCH_APP, Options, Scenario, Target
from .servers import Server, ServerError, WorkerSpec
from .stats import format_value


@dataclass(frozen=True)
class Plan:
    """What to run: the user's app, the classes, the scenarios, and how."""

    app: str
    cwd: str
    specs: Sequence[WorkerSpec]
    scenarios: Sequence[Scenario]
    options: Options
    workers: int
    rounds: int = 1
    gunicorn_args: Sequence[str] = ()
    pinning: affinity.Pinning | None = None
    #: The bench's own app for the scenarios that use it (WSGI or ASGI, like ``app``).
    bench_app: str = BENCH_APP
    #: Worker class name -> why it is skipped (``not installed: ...``): no server starts.
    skipped: Mapping[str, str] = field(default_factory=dict)


def execute(plan: Plan, progress: TextIO) -> list[RunResult]:
    """Run every scenario of ``plan`` against every class, the classes taking turns."""
    # Scenarios grouped by the app they run and the workers they need, so each group needs
    # one server per class.
    groups: dict[tuple[str, int], list[Scenario]] = {}
    for scenario in plan.scenarios:
        app = plan.bench_app if scenario.uses_bench_app else plan.app
        workers = scenario.server_workers(plan.options, plan.workers)
        groups.setdefault((app, workers), []).append(scenario)
    total = len(plan.scenarios) * len(plan.specs) * plan.rounds
    results: list[RunResult] = []
    with affinity.pinned_self(None if plan.pinning is None else plan.pinning.others):
        for (group_app, workers), scenarios in groups.items():
            servers = _start_servers(group_app, workers, plan, progress)
            try:
                for scenario in scenarios:
                    # The classes take turns within each round, so that a slow phase of a
                    # noisy machine hits all of them rather than the one that ran then.
                    for round_no in range(1, plan.rounds + 1):
                        for spec in plan.specs:
                            server = servers.get(spec)
                            if spec.worker_class in plan.skipped:
                                result = RunResult(
                                    scenario.name, spec.label, spec.worker_class, spec.threads,
                                    group_app, None, 0.0,
                                    skipped=plan.skipped[spec.worker_class])
                            else:
                                result = _run_one(scenario, spec, server, group_app, plan)
                            result.round = round_no
                            if result.error is not None and server is not None:
                                servers[spec] = _restart(server, progress)
                            results.append(result)
                            _progress(progress, len(results), total, result, scenario,
                                      plan.rounds)
            finally:
                for server in servers.values():
                    if server is not None:
                        server.stop()
    return results


def _start_servers(app: str, workers: int, plan: Plan, progress: TextIO
                   ) -> dict[WorkerSpec, Server | None]:
    servers: dict[WorkerSpec, Server | None] = {}
    for spec in plan.specs:
        if spec.worker_class in plan.skipped:
            continue
        server = Server(app, spec, workers, extra_args=plan.gunicorn_args, cwd=plan.cwd)
        try:
            server.start()
        except ServerError as exc:
            progress.write(f"could not start {spec.label} ({app}): {exc}\n"
                           + _import_hint(str(exc), app, plan.cwd))
            servers[spec] = None
            continue
        servers[spec] = server
    return servers


def _import_hint(log: str, app: str, cwd: str) -> str:
    """A line saying what to do when the app's module could not be imported."""
    if "ModuleNotFoundError" not in log and "No module named" not in log:
        return ""
    return (f"hint: {app} is not importable from {cwd}: run from the directory your app is "
            "imported from or pass --chdir DIR, and give the app as module:callable\n")


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
             plan: Plan) -> RunResult:
    result = RunResult(scenario.name, spec.label, spec.worker_class, spec.threads, app, None, 0.0)
    if server is None or server.proc is None:
        result.error = "server did not start"
        return result
    # The bench app answers 2xx on every route the scenarios use; anything else is a fault.
    options = (dataclasses.replace(plan.options, expect=expect.SUCCESS)
               if scenario.uses_bench_app else plan.options)
    t0 = time.monotonic()
    try:
        # A previous scenario may have left workers busy (e.g. with slow clients).
        if not server.wait_healthy(10.0):
            raise ServerError("server does not answer before the scenario")
        pinned = None
        if plan.pinning is not None:  # again: a worker forked since inherits the master's CPU
            pinned = affinity.apply(plan.pinning, server.proc.pid, server.worker_pids())
        measurement = scenario.run(Target(server.port, server.worker_pids, server.proc.pid),
                                   options)
        result.loadgen = measurement.loadgen
        result.metrics = measurement.metrics
        if pinned is not None:
            result.metrics["affinity"] = pinned
        found = expect.unexpected(measurement.statuses_by_path, options.expect)
        if found:
            result.metrics["unexpected_statuses"] = {
                path: {str(s): n for s, n in statuses.items()} for path, statuses in found.items()}
            result.error = expect.describe(found)
    except (ServerError, wrk.WrkError, OSError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    result.elapsed_s = time.monotonic() - t0
    return result


def _progress(out: TextIO, n: int, total: int, result: RunResult, scenario: Scenario,
              rounds: int) -> None:
    if result.skipped is not None:
        summary = f"skipped: {result.skipped}"
    elif result.error is not None:
        summary = f"FAILED: {result.error.splitlines()[0][:120]}"
    else:
        parts = []
        for h in (h for h in scenario.headlines if not h.detail):
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
