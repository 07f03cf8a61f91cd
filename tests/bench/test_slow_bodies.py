"""The slow-clients scenario holds slow request bodies too (slowhttptest -B), and this worker
keeps answering through them while ``sync`` and ``gthread`` do not."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gunicorn_fdpass.bench.measure import Options, Target
from gunicorn_fdpass.bench.scenarios import run_slow_clients
from tests.support.server import GunicornServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def _slow_clients(srv: GunicornServer) -> dict[str, float]:
    options = Options(duration_s=0.6, slow_clients=3, slow_deadline_s=1.0,
                      slow_probe_clients=2)
    return run_slow_clients(Target(srv.port, lambda: []), options).metrics


@pytest.mark.parametrize(("worker_class", "threads"), [("sync", None), ("gthread", 4)])
def test_slow_bodies_hold_gunicorns_own_workers(
        make_server: Callable[..., GunicornServer], worker_class: str,
        threads: int | None) -> None:
    # Three silent connections, three half-sent heads and three slow bodies: more than the
    # 1 (sync) or 4 (gthread) connections one such worker can hold at once. One worker, so
    # that all of them reach it: with two, the kernel may give one worker too few of them to
    # fill its threads, and it answers.
    metrics = _slow_clients(make_server(workers=1, worker_class=worker_class, threads=threads,
                                        app="gunicorn_fdpass.bench.apps:app"))
    assert metrics["slow_bodies"] == 3
    assert metrics["answered_ok"] == 0


def test_slow_bodies_cost_this_worker_nothing(
        make_server: Callable[..., GunicornServer]) -> None:
    metrics = _slow_clients(make_server(workers=2, app="gunicorn_fdpass.bench.apps:app"))
    assert metrics["slow_bodies"] == 3
    assert metrics["answered_ok"] > 0 and metrics["answered_pct"] == 100.0
    assert metrics["held_open_at_end"] == 9  # the master held every slow client
