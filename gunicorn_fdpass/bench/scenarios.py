"""The scenarios: each drives one running server and returns its measurements.

Every scenario function takes a :class:`Target` (the server's port and workers) and the run's
:class:`Options`, and returns a :class:`Measurement`: which load generator was used and a
JSON-ready ``metrics`` dict. :data:`SCENARIOS` lists them in run order with the app they need
and the numbers that go into the comparison table.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import loadgen, wrk
from .stats import Better, jain_index, summarize

#: The bench's own app, for the scenarios that need ``/slow`` or ``X-Worker-Pid``.
BENCH_APP = "gunicorn_fdpass.bench.apps:app"


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

    def use_wrk(self) -> bool:
        """Whether the throughput scenarios run wrk."""
        return self.loadgen != "builtin" and self.rate <= 0 and self.wrk_path is not None


@dataclass(frozen=True)
class Target:
    """The server under test, as the scenarios see it."""

    port: int
    worker_pids: Callable[[], list[int]]


@dataclass
class Measurement:
    """What one scenario measured on one server."""

    loadgen: str
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Headline:
    """One number of a scenario shown in the table: ``metrics[key]`` (a dotted path)."""

    metric: str
    unit: str
    better: Better
    key: str

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


# -- shared helpers -------------------------------------------------------------------------


def _load_metrics(result: loadgen.LoadResult) -> dict[str, Any]:
    return {
        "requests": result.requests,
        "requests_per_s": result.requests_per_s,
        "duration_s": result.duration_s,
        "statuses": {str(k): v for k, v in sorted(result.statuses.items())},
        "errors": dict(sorted(result.errors.items())),
        "latency_ms": summarize(result.latencies_s).as_dict(),
    }


def _wrk_metrics(result: wrk.WrkResult) -> dict[str, Any]:
    latency = {k: (None if math.isnan(v) else v) for k, v in result.latency_ms.items()}
    return {
        "requests": result.requests,
        "requests_per_s": result.requests_per_s,
        "duration_s": result.duration_s,
        "statuses": {str(k): v for k, v in sorted(result.statuses.items())},
        "errors": {k: v for k, v in sorted(result.errors.items()) if v},
        "latency_ms": {"count": result.requests, **latency},
    }


def _warm_up(target: Target, options: Options, path: str, keep_alive: bool) -> None:
    if options.warmup_s > 0:
        asyncio.run(loadgen.closed_loop(target.port, path=path, connections=options.connections,
                                        duration_s=options.warmup_s, keep_alive=keep_alive,
                                        timeout_s=options.request_timeout_s))


def _throughput(target: Target, options: Options, *, path: str, keep_alive: bool,
                connections: int) -> tuple[Measurement, dict[int, int]]:
    """Closed-loop load (wrk or built-in), or the built-in open loop when ``--rate`` is set."""
    _warm_up(target, options, path, keep_alive)
    if options.use_wrk():
        assert options.wrk_path is not None
        headers = () if keep_alive else ("Connection: close",)
        wres = wrk.run(f"http://127.0.0.1:{target.port}{path}", connections=connections,
                       duration_s=options.duration_s, threads=options.wrk_threads,
                       headers=headers, timeout_s=options.request_timeout_s,
                       path=options.wrk_path)
        return Measurement("wrk", _wrk_metrics(wres)), dict(wres.pids)
    if options.rate > 0:
        lres = asyncio.run(loadgen.open_loop(
            target.port, rate=options.rate, path=path, duration_s=options.duration_s,
            keep_alive=keep_alive, connections=connections,
            timeout_s=options.request_timeout_s))
        metrics = _load_metrics(lres)
        metrics.update(rate=options.rate, late=lres.late)
        return Measurement("builtin-open-loop", metrics), dict(lres.pids)
    lres = asyncio.run(loadgen.closed_loop(
        target.port, path=path, connections=connections, duration_s=options.duration_s,
        keep_alive=keep_alive, timeout_s=options.request_timeout_s))
    return Measurement("builtin", _load_metrics(lres)), dict(lres.pids)


# -- (a) one request per connection, keep-alive --------------------------------------------


def run_close(target: Target, options: Options) -> Measurement:
    """One request per connection (``Connection: close``) against the user's app."""
    measurement, _ = _throughput(target, options, path=options.path, keep_alive=False,
                                 connections=options.connections)
    return measurement


def run_keepalive(target: Target, options: Options) -> Measurement:
    """Persistent connections against the user's app."""
    measurement, _ = _throughput(target, options, path=options.path, keep_alive=True,
                                 connections=options.connections)
    return measurement


# -- (b) slow clients ----------------------------------------------------------------------


async def _slow_clients(target: Target, options: Options) -> dict[str, Any]:
    held: list[asyncio.StreamWriter] = []
    watchers: list[asyncio.Task[bytes]] = []
    half = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow-Client: "
    n = options.slow_clients
    try:
        for i in range(2 * n):
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", target.port), options.request_timeout_s)
            if i % 2:
                writer.write(half)  # a request head that never ends
                await writer.drain()
            held.append(writer)
            # Completes if the server answers or closes the connection while we hold it.
            watchers.append(asyncio.create_task(reader.read(1)))
        probe = await loadgen.closed_loop(
            target.port, path=options.path, connections=options.slow_probe_clients,
            duration_s=options.duration_s, keep_alive=False, timeout_s=options.slow_deadline_s,
            finish_in_flight=True)
        closed_by_server = sum(1 for w in watchers if w.done())
    finally:
        for task in watchers:
            task.cancel()
        for task in watchers:
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await task
        for writer in held:
            writer.close()
    metrics = _load_metrics(probe)
    answered = probe.requests
    failed = sum(probe.errors.values())
    attempted = answered + failed
    ok = sum(v for k, v in probe.statuses.items() if 200 <= k < 400)
    metrics.update(
        silent=n, half_sent=n, held_open_at_end=2 * n - closed_by_server,
        closed_by_server=closed_by_server, deadline_s=options.slow_deadline_s,
        attempted=attempted, answered=answered, answered_ok=ok,
        timed_out=probe.errors.get("timeout", 0),
        answered_pct=100.0 * answered / attempted if attempted else 0.0,
    )
    return metrics


def run_slow_clients(target: Target, options: Options) -> Measurement:
    """N silent and N half-sent connections held open while ordinary requests are timed.

    An ordinary request counts as answered if its response arrived within the deadline
    (``--slow-deadline``); each probe client sends one request per connection.
    """
    return Measurement("builtin", asyncio.run(_slow_clients(target, options)))


# -- (c) slow and fast requests mixed: head-of-line blocking -------------------------------


async def _hol(target: Target, options: Options) -> dict[str, Any]:
    slow_path = f"/slow?ms={options.hol_slow_ms}"
    slow_timeout = options.hol_slow_ms / 1000.0 + options.request_timeout_s
    slow_task = asyncio.create_task(loadgen.closed_loop(
        target.port, path=slow_path, connections=options.hol_slow_clients,
        duration_s=options.duration_s, keep_alive=False, timeout_s=slow_timeout))
    # Give the slow requests a head start so that the fast ones meet busy workers.
    await asyncio.sleep(min(0.05, options.duration_s / 10))
    try:
        fast = await loadgen.open_loop(
            target.port, rate=options.hol_rate, path="/", duration_s=options.duration_s * 0.9,
            keep_alive=False, connections=256, timeout_s=options.request_timeout_s)
    finally:
        slow = await slow_task
    metrics = _load_metrics(fast)
    metrics.update(
        rate=options.hol_rate, late=fast.late, slow_ms=options.hol_slow_ms,
        slow_clients=options.hol_slow_clients, slow_requests=slow.requests,
        slow_errors=dict(slow.errors),
        # Kept for the plots: every fast latency in ms.
        fast_latencies_ms=[round(x * 1000.0, 3) for x in fast.latencies_s],
    )
    return metrics


def run_hol(target: Target, options: Options) -> Measurement:
    """Slow requests (closed loop) mixed with fast ones sent open loop at a fixed rate.

    The fast requests' latency is measured from their intended send time, so time spent
    waiting behind a slow request is never hidden.
    """
    return Measurement("builtin-open-loop", asyncio.run(_hol(target, options)))


# -- (d) fairness -----------------------------------------------------------------------------


def run_fairness(target: Target, options: Options) -> Measurement:
    """Sustained keep-alive load; requests per worker (``X-Worker-Pid``) and Jain's index."""
    workers = target.worker_pids()
    measurement, pids = _throughput(target, options, path="/", keep_alive=True,
                                    connections=options.connections)
    per_worker = {pid: pids.get(pid, 0) for pid in workers}
    for pid, count in pids.items():  # a worker restarted meanwhile still counts
        per_worker.setdefault(pid, count)
    counts = list(per_worker.values())
    total = sum(counts)
    measurement.metrics.update(
        per_worker={str(pid): count for pid, count in sorted(per_worker.items())},
        jain=jain_index(counts) if counts else None,
        max_share_pct=100.0 * max(counts) / total if total else None,
        min_share_pct=100.0 * min(counts) / total if total else None,
    )
    return measurement


# -- (e) master handoff rate ------------------------------------------------------------------


def run_handoff(target: Target, options: Options) -> Measurement:
    """Many short connections (one trivial request each): connections per second."""
    measurement, _ = _throughput(target, options, path="/", keep_alive=False,
                                 connections=options.handoff_connections)
    measurement.metrics["connections_per_s"] = measurement.metrics["requests_per_s"]
    return measurement


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("close", "one request per connection", False, (
        Headline("throughput", "req/s", "higher", "requests_per_s"),
        Headline("p99 latency", "ms", "lower", "latency_ms.p99"),
    ), run_close),
    Scenario("keepalive", "keep-alive connections", False, (
        Headline("throughput", "req/s", "higher", "requests_per_s"),
        Headline("p99 latency", "ms", "lower", "latency_ms.p99"),
    ), run_keepalive),
    Scenario("slow-clients", "silent and half-sent connections held open", False, (
        Headline("answered in deadline", "%", "higher", "answered_pct"),
        Headline("answered", "req/s", "higher", "requests_per_s"),
    ), run_slow_clients),
    Scenario("hol", "slow and fast requests mixed (fast ones open loop)", True, (
        Headline("fast p50", "ms", "lower", "latency_ms.p50"),
        Headline("fast p99", "ms", "lower", "latency_ms.p99"),
    ), run_hol),
    Scenario("fairness", "requests per worker under sustained load", True, (
        Headline("Jain's index", "", "higher", "jain"),
        Headline("busiest worker share", "%", "lower", "max_share_pct"),
    ), run_fairness),
    Scenario("handoff", "short connections against a trivial app", True, (
        Headline("handoff rate", "conn/s", "higher", "connections_per_s"),
    ), run_handoff),
)

SCENARIO_NAMES: tuple[str, ...] = tuple(s.name for s in SCENARIOS)


def by_name(name: str) -> Scenario:
    """The scenario called ``name``."""
    for scenario in SCENARIOS:
        if scenario.name == name:
            return scenario
    raise KeyError(name)

