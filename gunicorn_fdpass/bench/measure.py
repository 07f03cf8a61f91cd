"""What every scenario shares: the options, the server under test (:class:`Target`), what a
scenario returns (:class:`Measurement`), its table rows (:class:`Headline`), and the closed- or
open-loop throughput run with the server's CPU time sampled around the measured window.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import cpu, loadgen, wrk
from .expect import SUCCESS, StatusSet
from .stats import Better, summarize

#: The bench's own app, for the scenarios that need ``/slow`` or ``X-Worker-Pid``.
BENCH_APP = "gunicorn_fdpass.bench.apps:app"
#: The same app for ASGI worker classes.
ASGI_BENCH_APP = "gunicorn_fdpass.bench.asgi_apps:app"
#: The app kinds: a WSGI app runs under WSGI worker classes, an ASGI app under ASGI ones.
WSGI, ASGI = "wsgi", "asgi"
BENCH_APPS = {WSGI: BENCH_APP, ASGI: ASGI_BENCH_APP}
#: The queueing scenario's default view: a few milliseconds of waiting.
QUEUEING_PATH = "/slow?ms=5"


@dataclass(frozen=True)
class Options:
    """Knobs shared by all scenarios (the CLI fills them in)."""

    duration_s: float = 3.0
    warmup_s: float = 0.5
    connections: int = 16
    path: str = "/"
    #: "auto" (wrk when installed), "wrk" or "builtin".
    loadgen: str = "auto"
    wrk_path: str | None = None
    wrk_threads: int = 2
    #: > 0: the throughput scenarios use the built-in open loop at this many requests/s.
    rate: float = 0.0
    request_timeout_s: float = 5.0
    slow_clients: int = 8
    slow_deadline_s: float = 1.0
    slow_probe_clients: int = 4
    hol_slow_clients: int = 2
    hol_slow_ms: int = 250
    hol_rate: float = 50.0
    handoff_connections: int = 64
    #: Statuses that count as success (``--expect-status``); the bench app's scenarios always
    #: expect 2xx, since that app answers nothing else on the routes they use.
    expect: StatusSet = SUCCESS
    queueing_path: str = QUEUEING_PATH
    queueing_connections: int = 16
    #: balance: its own servers' workers, the route, connections, burst size, draws.
    balance_workers: int = 4
    balance_path: str = "/cpu?ms=1"
    balance_connections: int = 8
    balance_burst: int = 4
    balance_draws: int = 3

    def use_wrk(self) -> bool:
        """Whether the throughput scenarios run wrk."""
        return self.loadgen != "builtin" and self.rate <= 0 and self.wrk_path is not None


@dataclass(frozen=True)
class Target:
    """The server under test, as the scenarios see it."""

    port: int
    worker_pids: Callable[[], list[int]]
    #: The Gunicorn master, whose CPU time (and its children's) the throughput runs sample.
    master_pid: int | None = None


@dataclass
class Measurement:
    """What one scenario measured on one server.

    ``statuses_by_path`` counts the responses per requested path and status; the command line
    checks them against the expected statuses.
    """

    loadgen: str
    metrics: dict[str, Any] = field(default_factory=dict)
    statuses_by_path: dict[str, dict[int, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class Headline:
    """One number of a scenario shown in the table: ``metrics[key]`` (a dotted path)."""

    metric: str
    unit: str
    better: Better
    key: str
    #: Shown in the table but left out of the progress lines (the CPU figures).
    detail: bool = False
    #: Shown as a ratio against the baseline. Not the master's own figures: the baseline's
    #: master (``sync``'s, ``asgi``'s) accepts nothing, so its CPU is a stray tick or none.
    compare: bool = True

    def value(self, metrics: Mapping[str, Any]) -> float | None:
        """The number at :attr:`key` in ``metrics``, or None if absent."""
        node: Any = metrics
        for part in self.key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return None
            node = node[part]
        if node is None:
            return None
        value = float(node)
        return None if math.isnan(value) else value


@dataclass(frozen=True)
class Scenario:
    """A scenario: its name, what it shows, which app it runs, its table rows, its code."""

    name: str
    title: str
    uses_bench_app: bool
    headlines: tuple[Headline, ...]
    run: Callable[[Target, Options], Measurement]
    #: The app kinds whose runs include it when ``--scenarios`` is not given.
    default_for: frozenset[str] = frozenset({WSGI, ASGI})
    #: The worker count its servers need, when not ``--workers`` (balance: 4).
    workers: Callable[[Options], int] | None = None

    def server_workers(self, options: Options, default: int) -> int:
        """How many workers the servers of this scenario run."""
        return default if self.workers is None else self.workers(options)


# -- shared helpers -------------------------------------------------------------------------


def load_metrics(result: loadgen.LoadResult) -> dict[str, Any]:
    """The metrics every run of the built-in load generator has."""
    return {
        "requests": result.requests,
        "requests_per_s": result.requests_per_s,
        "duration_s": result.duration_s,
        "statuses": {str(k): v for k, v in sorted(result.statuses.items())},
        "errors": dict(sorted(result.errors.items())),
        "latency_ms": summarize(result.latencies_s).as_dict(),
    }


def wrk_metrics(result: wrk.WrkResult) -> dict[str, Any]:
    """The same metrics from a wrk run (and the CPUs wrk ran on, when known)."""
    latency = {k: (None if math.isnan(v) else v) for k, v in result.latency_ms.items()}
    metrics: dict[str, Any] = {
        "requests": result.requests,
        "requests_per_s": result.requests_per_s,
        "duration_s": result.duration_s,
        "statuses": {str(k): v for k, v in sorted(result.statuses.items())},
        "errors": {k: v for k, v in sorted(result.errors.items()) if v},
        "latency_ms": {"count": result.requests, **latency},
    }
    if result.cpus is not None:
        metrics["loadgen_cpus"] = result.cpus
    return metrics


def warm_up(target: Target, options: Options, path: str, keep_alive: bool,
            connections: int | None = None) -> None:
    """Untimed load for ``--warmup`` seconds (none when it is 0)."""
    if options.warmup_s > 0:
        asyncio.run(loadgen.closed_loop(
            target.port, path=path, connections=connections or options.connections,
            duration_s=options.warmup_s, keep_alive=keep_alive,
            timeout_s=options.request_timeout_s))


def cpu_sample(target: Target) -> cpu.Sample | None:
    """The server's CPU ticks now (None without a master pid)."""
    if target.master_pid is None:
        return None
    return cpu.sample(target.master_pid, target.worker_pids())


def add_cpu(metrics: dict[str, Any], before: cpu.Sample | None, after: cpu.Sample | None,
            connections: int) -> None:
    """``metrics["cpu"]``: the server's CPU per request and connection over the window."""
    if before is not None and after is not None:
        metrics["cpu"] = cpu.usage(before, after, requests=int(metrics["requests"]),
                                   connections=connections)


def throughput(target: Target, options: Options, *, path: str, keep_alive: bool,
               connections: int) -> tuple[Measurement, dict[int, int]]:
    """Closed-loop load (wrk or built-in), or the built-in open loop when ``--rate`` is set.

    Returns the measurement (with the server's CPU time, ``metrics["cpu"]``) and the
    responses per ``X-Worker-Pid``.
    """
    warm_up(target, options, path, keep_alive)
    before = cpu_sample(target)
    measurement, pids, opened = _load(target, options, path=path, keep_alive=keep_alive,
                                      connections=connections)
    after = cpu_sample(target)
    if not keep_alive:  # every attempt was a connection of its own
        errors = measurement.metrics["errors"]
        # wrk counts wrong statuses as errors too; those were answered requests.
        opened = measurement.metrics["requests"] + sum(
            v for k, v in errors.items() if k != "status")
    add_cpu(measurement.metrics, before, after, opened)
    return measurement, pids


def _load(target: Target, options: Options, *, path: str, keep_alive: bool, connections: int
          ) -> tuple[Measurement, dict[int, int], int]:
    """The measured run: measurement, responses per worker pid, connections opened."""
    if options.use_wrk():
        assert options.wrk_path is not None
        headers = () if keep_alive else ("Connection: close",)
        wres = wrk.run(f"http://127.0.0.1:{target.port}{path}", connections=connections,
                       duration_s=options.duration_s, threads=options.wrk_threads,
                       headers=headers, timeout_s=options.request_timeout_s,
                       path=options.wrk_path)
        # wrk keeps its connections open and opens a new one after each socket error.
        opened = connections + wres.socket_errors
        return (Measurement("wrk", wrk_metrics(wres), {path: dict(wres.statuses)}),
                dict(wres.pids), opened)
    if options.rate > 0:
        lres = asyncio.run(loadgen.open_loop(
            target.port, rate=options.rate, path=path, duration_s=options.duration_s,
            keep_alive=keep_alive, connections=connections,
            timeout_s=options.request_timeout_s))
        metrics = load_metrics(lres)
        metrics.update(rate=options.rate, late=lres.late)
        return (Measurement("builtin-open-loop", metrics, {path: dict(lres.statuses)}),
                dict(lres.pids), lres.connects)
    lres = asyncio.run(loadgen.closed_loop(
        target.port, path=path, connections=connections, duration_s=options.duration_s,
        keep_alive=keep_alive, timeout_s=options.request_timeout_s))
    return (Measurement("builtin", load_metrics(lres), {path: dict(lres.statuses)}),
            dict(lres.pids), lres.connects)


def cpu_headlines(per_connection: bool) -> tuple[Headline, ...]:
    """The CPU rows of a throughput scenario: the master's cost per connection (one request
    per connection) or per request (keep-alive), the workers' and both together per request,
    and the rate the master's cost alone would allow."""
    unit = "conn/s" if per_connection else "req/s"
    master = (Headline("master CPU per conn", "us", "lower", "cpu.master_us_per_conn", True,
                       compare=False)
              if per_connection else
              Headline("master CPU per req", "us", "lower", "cpu.master_us_per_req", True,
                       compare=False))
    return (
        master,
        Headline("worker CPU per req", "us", "lower", "cpu.worker_us_per_req", True),
        Headline("total CPU per req", "us", "lower", "cpu.server_us_per_req", True),
        Headline("master ceiling", unit, "higher", "cpu.master_ceiling_per_s", True,
                 compare=False),
    )
