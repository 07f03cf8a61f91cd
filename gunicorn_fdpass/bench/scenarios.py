"""The scenarios: each drives one running server and returns its measurements.

Every scenario function takes a :class:`Target` (the server's port and workers) and the run's
:class:`Options`, and returns a :class:`Measurement`: which load generator was used and a
JSON-ready ``metrics`` dict. :data:`SCENARIOS` lists them in run order with the app they need
and the numbers that go into the comparison table.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from . import loadgen
from .balance import BALANCE
from .expect import count_expected
from .measure import (
    BENCH_APP,
    QUEUEING_PATH,
    Headline,
    Measurement,
    Options,
    Scenario,
    Target,
    add_cpu,
    cpu_headlines,
    cpu_sample,
    load_metrics,
    throughput,
    warm_up,
)
from .stats import jain_index, spread

__all__ = ["BENCH_APP", "QUEUEING_PATH", "SCENARIOS", "SCENARIO_NAMES", "Headline",
           "Measurement", "Options", "Scenario", "Target", "by_name", "default_names"]


# -- (a) one request per connection, keep-alive --------------------------------------------


def run_close(target: Target, options: Options) -> Measurement:
    """One request per connection (``Connection: close``) against the user's app."""
    measurement, _ = throughput(target, options, path=options.path, keep_alive=False,
                                 connections=options.connections)
    return measurement


def run_keepalive(target: Target, options: Options) -> Measurement:
    """Persistent connections against the user's app."""
    measurement, _ = throughput(target, options, path=options.path, keep_alive=True,
                                 connections=options.connections)
    return measurement


# -- (b) slow clients ----------------------------------------------------------------------


#: A slow body (slowhttptest -B): a 4 KB form body sent a few bytes at a time.
SLOW_BODY_SIZE = 4096
_SLOW_BODY_STEP = 8  # bytes per connection and tick
_SLOW_BODY_TICK_S = 0.1


def _slow_body_head(path: str) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {SLOW_BODY_SIZE}\r\n\r\n").encode("ascii")


async def _dribble(writers: list[asyncio.StreamWriter]) -> None:
    """Send each slow body a few bytes per tick, never its last byte (until cancelled)."""
    sent = 0
    while sent + _SLOW_BODY_STEP < SLOW_BODY_SIZE:
        await asyncio.sleep(_SLOW_BODY_TICK_S)
        for writer in writers:
            if not writer.is_closing():
                writer.write(b"x" * _SLOW_BODY_STEP)
        sent += _SLOW_BODY_STEP


async def _slow_clients(target: Target, options: Options
                        ) -> tuple[dict[str, Any], dict[int, int]]:
    held: list[asyncio.StreamWriter] = []
    bodies: list[asyncio.StreamWriter] = []
    watchers: list[asyncio.Task[bytes]] = []
    half = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow-Client: "
    n = options.slow_clients
    dribbler: asyncio.Task[None] | None = None
    try:
        for i in range(3 * n):
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", target.port), options.request_timeout_s)
            if i % 3 == 1:
                writer.write(half)  # a request head that never ends
                await writer.drain()
            elif i % 3 == 2:
                writer.write(_slow_body_head(options.path) + b"x" * _SLOW_BODY_STEP)
                await writer.drain()
                bodies.append(writer)  # a body that keeps coming, a few bytes at a time
            held.append(writer)
            # Completes if the server answers or closes the connection while we hold it.
            watchers.append(asyncio.create_task(reader.read(1)))
        dribbler = asyncio.create_task(_dribble(bodies))
        probe = await loadgen.closed_loop(
            target.port, path=options.path, connections=options.slow_probe_clients,
            duration_s=options.duration_s, keep_alive=False, timeout_s=options.slow_deadline_s,
            finish_in_flight=True)
        closed_by_server = sum(1 for w in watchers if w.done())
    finally:
        for task in [*watchers, *([dribbler] if dribbler else [])]:
            task.cancel()
        for task in [*watchers, *([dribbler] if dribbler else [])]:
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await task
        for writer in held:
            writer.close()
    metrics = load_metrics(probe)
    answered = probe.requests
    failed = sum(probe.errors.values())
    attempted = answered + failed
    # An error page answered in time is not a request served: only expected statuses count.
    ok = count_expected(probe.statuses, options.expect)
    metrics.update(
        silent=n, half_sent=n, slow_bodies=n, held_open_at_end=3 * n - closed_by_server,
        closed_by_server=closed_by_server, deadline_s=options.slow_deadline_s,
        attempted=attempted, answered=answered, answered_ok=ok,
        timed_out=probe.errors.get("timeout", 0),
        answered_pct=100.0 * ok / attempted if attempted else 0.0,
        answered_ok_per_s=ok / probe.duration_s if probe.duration_s > 0 else 0.0,
    )
    return metrics, dict(probe.statuses)


def run_slow_clients(target: Target, options: Options) -> Measurement:
    """N silent connections, N half-sent heads and N slow bodies (a 4 KB form body, a few
    bytes at a time: ``slowhttptest -B``) held open while ordinary requests are timed.

    An ordinary request counts as answered if its response arrived within the deadline
    (``--slow-deadline``) with an expected status; each probe client sends one request per
    connection.
    """
    metrics, statuses = asyncio.run(_slow_clients(target, options))
    return Measurement("builtin", metrics, {options.path: statuses})


# -- (c) slow and fast requests mixed: head-of-line blocking -------------------------------


async def _hol(target: Target, options: Options) -> Measurement:
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
    metrics = load_metrics(fast)
    metrics.update(
        rate=options.hol_rate, late=fast.late, slow_ms=options.hol_slow_ms,
        slow_clients=options.hol_slow_clients, slow_requests=slow.requests,
        slow_errors=dict(slow.errors),
        slow_statuses={str(k): v for k, v in sorted(slow.statuses.items())},
        # Kept for the plots: every fast latency in ms.
        fast_latencies_ms=[round(x * 1000.0, 3) for x in fast.latencies_s],
    )
    return Measurement("builtin-open-loop", metrics,
                       {"/": dict(fast.statuses), slow_path: dict(slow.statuses)})


def run_hol(target: Target, options: Options) -> Measurement:
    """Slow requests (closed loop) mixed with fast ones sent open loop at a fixed rate.

    The fast requests' latency is measured from their intended send time, so time spent
    waiting behind a slow request is never hidden.
    """
    return asyncio.run(_hol(target, options))


# -- (d) fairness -----------------------------------------------------------------------------


def run_fairness(target: Target, options: Options) -> Measurement:
    """Sustained keep-alive load; requests per worker (``X-Worker-Pid``) and Jain's index."""
    workers = target.worker_pids()
    measurement, pids = throughput(target, options, path="/", keep_alive=True,
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
    measurement, _ = throughput(target, options, path="/", keep_alive=False,
                                 connections=options.handoff_connections)
    measurement.metrics["connections_per_s"] = measurement.metrics["requests_per_s"]
    return measurement


# -- (f) more keep-alive connections than slots ------------------------------------------------


def run_queueing(target: Target, options: Options) -> Measurement:
    """More keep-alive connections than the server has slots, each sending its next request
    as soon as the last is answered, against a view of a few milliseconds.

    Every class serves the same number of requests per second (the slots are the limit); what
    differs is the order: served first come, first served, every connection gets about the
    same number of requests and the latency stays near ``connections / slots`` views; served
    out of order, some connections race ahead while others wait, and p99 and max grow.
    """
    path, connections = options.queueing_path, options.queueing_connections
    warm_up(target, options, path, True, connections)
    before = cpu_sample(target)
    lres = asyncio.run(loadgen.closed_loop(
        target.port, path=path, connections=connections, duration_s=options.duration_s,
        keep_alive=True, timeout_s=options.request_timeout_s))
    after = cpu_sample(target)
    metrics = load_metrics(lres)
    metrics.update(path=path, connections=connections, per_connection=lres.per_connection,
                   per_connection_spread=spread(lres.per_connection))
    add_cpu(metrics, before, after, lres.connects)
    return Measurement("builtin", metrics, {path: dict(lres.statuses)})


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("close", "one request per connection", False, (
        Headline("throughput", "req/s", "higher", "requests_per_s"),
        Headline("p99 latency", "ms", "lower", "latency_ms.p99"),
        *cpu_headlines(per_connection=True),
    ), run_close),
    Scenario("keepalive", "keep-alive connections", False, (
        Headline("throughput", "req/s", "higher", "requests_per_s"),
        Headline("p99 latency", "ms", "lower", "latency_ms.p99"),
        *cpu_headlines(per_connection=False),
    ), run_keepalive),
    Scenario("slow-clients", "silent and half-sent connections held open", False, (
        Headline("answered in deadline", "%", "higher", "answered_pct"),
        Headline("answered", "req/s", "higher", "answered_ok_per_s"),
    ), run_slow_clients),
    Scenario("hol", "slow and fast requests mixed (fast ones open loop)", True, (
        Headline("fast p50", "ms", "lower", "latency_ms.p50"),
        Headline("fast p99", "ms", "lower", "latency_ms.p99"),
    ), run_hol),
    Scenario("fairness", "requests per worker under sustained load", True, (
        Headline("Jain's index", "", "higher", "jain"),
        Headline("busiest worker share", "%", "lower", "max_share_pct"),
        *cpu_headlines(per_connection=False),
    ), run_fairness),
    Scenario("handoff", "short connections against a trivial app", True, (
        Headline("handoff rate", "conn/s", "higher", "connections_per_s"),
        *cpu_headlines(per_connection=True),
    ), run_handoff),
    Scenario("queueing", "more keep-alive connections than slots, a view of a few ms", True, (
        Headline("throughput", "req/s", "higher", "requests_per_s"),
        Headline("p50 latency", "ms", "lower", "latency_ms.p50"),
        Headline("p99 latency", "ms", "lower", "latency_ms.p99"),
        Headline("max latency", "ms", "lower", "latency_ms.max"),
        Headline("requests per connection CV", "", "lower", "per_connection_spread.cv"),
    ), run_queueing),
    BALANCE,  # in a module of its own; runs on servers of its own size (4 workers)
)

SCENARIO_NAMES: tuple[str, ...] = tuple(s.name for s in SCENARIOS)


def default_names(kind: str) -> tuple[str, ...]:
    """The scenarios run for an app of ``kind`` (``wsgi`` / ``asgi``) without ``-s``."""
    return tuple(s.name for s in SCENARIOS if kind in s.default_for)


def by_name(name: str) -> Scenario:
    """The scenario called ``name``."""
    for scenario in SCENARIOS:
        if scenario.name == name:
            return scenario
    raise KeyError(name)

