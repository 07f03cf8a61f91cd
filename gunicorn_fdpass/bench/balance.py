"""The balance scenario: how evenly a worker class spreads CPU-bound keep-alive traffic.

Its servers run ``--balance-workers`` (4) workers. Each *draw* opens
``--balance-connections`` (8) new keep-alive connections in bursts of ``--balance-burst``
(4), each looping on a route that burns CPU (``/cpu?ms=1``) for ``--duration`` seconds, then
closes them; ``--balance-draws`` (3) draws give each class several chances to place its
connections. Where every worker accepts for itself, the first to wake takes a whole burst
and keeps those connections for their lifetime, so one worker's event loop is saturated while
others idle; a master that places each connection can spread them.

Per draw, each worker's CPU time (``/proc`` ticks, :mod:`.cpu`) and requests
(``X-Worker-Pid``) give Jain's index and the busiest worker's share; the table shows their
mean over the draws, the worst draw's index, and the p99 latency of all requests.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from . import cpu, loadgen
from .measure import (
    ASGI,
    Headline,
    Measurement,
    Options,
    Scenario,
    Target,
    add_cpu,
    cpu_sample,
    load_metrics,
    warm_up,
)
from .stats import jain_index, median


def worker_cpu_ticks(before: cpu.Sample | None, after: cpu.Sample | None,
                     workers: Iterable[int]) -> dict[int, int]:
    """CPU ticks each worker used between the samples: every pid in ``workers`` (0 if it
    used none), and any worker that appeared meanwhile, counted from zero."""
    if before is None or after is None:
        return {}
    ticks = {pid: 0 for pid in workers}
    for pid, t in after.workers.items():
        ticks[pid] = t - before.workers.get(pid, 0)
    return ticks


def share_figures(per_worker: Mapping[int, float]) -> dict[str, float | None]:
    """Jain's index and the busiest worker's share (%) of one allocation; None if nothing
    was allocated (an idle window measures no balance, even or not)."""
    total = sum(per_worker.values())
    if not per_worker or total <= 0:
        return {"jain": None, "max_share_pct": None}
    return {"jain": jain_index(per_worker.values()),
            "max_share_pct": 100.0 * max(per_worker.values()) / total}


def draw_metrics(workers: Iterable[int], before: cpu.Sample | None, after: cpu.Sample | None,
                 result: loadgen.LoadResult) -> dict[str, Any]:
    """One draw's figures: per-worker CPU ticks and requests, and the balance of each."""
    workers = list(workers)
    ticks = worker_cpu_ticks(before, after, workers)
    requests = {pid: result.pids.get(pid, 0) for pid in workers}
    for pid, count in result.pids.items():  # a worker restarted meanwhile still counts
        requests.setdefault(pid, count)
    by_cpu = share_figures(ticks)
    by_requests = share_figures(requests)
    return {
        "requests": result.requests,
        "requests_per_s": result.requests_per_s,
        "per_worker_cpu_ticks": {str(p): t for p, t in sorted(ticks.items())},
        "per_worker_requests": {str(p): n for p, n in sorted(requests.items())},
        "per_connection": list(result.per_connection),
        "jain_cpu": by_cpu["jain"], "max_cpu_share_pct": by_cpu["max_share_pct"],
        "jain_requests": by_requests["jain"],
        "max_requests_share_pct": by_requests["max_share_pct"],
        "latency_ms": load_metrics(result)["latency_ms"],
    }


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def summarize_draws(draws: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures over all draws: means of each draw's balance, the worst draw, and the
    requests of every worker added up."""
    jains = [d["jain_cpu"] for d in draws if d["jain_cpu"] is not None]
    shares = [d["max_cpu_share_pct"] for d in draws if d["max_cpu_share_pct"] is not None]
    per_worker: Counter[str] = Counter()
    for d in draws:
        per_worker.update(d["per_worker_requests"])
    return {
        "jain_cpu": _mean(jains), "jain_cpu_min": min(jains, default=None),
        "jain_cpu_median": median(jains),
        "max_cpu_share_pct": _mean(shares), "max_cpu_share_pct_max": max(shares, default=None),
        "jain_requests": _mean(d["jain_requests"] for d in draws),
        "per_worker_requests": dict(sorted(per_worker.items())),
    }


def run_balance(target: Target, options: Options) -> Measurement:
    """Draws of keep-alive connections opened in bursts on a CPU-bound route; the balance of
    the workers' CPU time and requests in each draw (see the module docstring)."""
    path = options.balance_path
    warm_up(target, options, path, True, options.balance_connections)
    total = loadgen.LoadResult(duration_s=options.duration_s * options.balance_draws)
    draws: list[dict[str, Any]] = []
    first = cpu_sample(target)
    after = first
    for _ in range(options.balance_draws):
        workers = target.worker_pids()
        before = after if after is not None else cpu_sample(target)
        result = asyncio.run(loadgen.burst_loop(
            target.port, path=path, connections=options.balance_connections,
            burst=options.balance_burst, duration_s=options.duration_s,
            timeout_s=options.request_timeout_s))
        after = cpu_sample(target)
        draws.append(draw_metrics(workers, before, after, result))
        total.latencies_s += result.latencies_s
        total.statuses.update(result.statuses)
        total.errors.update(result.errors)
        total.connects += result.connects
    metrics = load_metrics(total)
    metrics.update(path=path, workers=options.balance_workers,
                   connections=options.balance_connections, burst=options.balance_burst,
                   draws=draws, **summarize_draws(draws))
    add_cpu(metrics, first, after, total.connects)
    return Measurement("builtin", metrics, {path: dict(total.statuses)})


BALANCE = Scenario(
    "balance", "CPU-bound keep-alive connections opened in bursts, several draws", True, (
        Headline("Jain's index of worker CPU", "", "higher", "jain_cpu"),
        Headline("worst draw's Jain's index", "", "higher", "jain_cpu_min"),
        Headline("busiest worker's CPU share", "%", "lower", "max_cpu_share_pct"),
        Headline("Jain's index of requests", "", "higher", "jain_requests", True),
        Headline("p99 latency", "ms", "lower", "latency_ms.p99"),
        Headline("throughput", "req/s", "higher", "requests_per_s", True),
    ), run_balance, default_for=frozenset({ASGI}), workers=lambda o: o.balance_workers)
