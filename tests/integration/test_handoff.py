"""Handoffs between the master and real workers: acknowledgement, lost fds, fork safety."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.support.server import GunicornServer
from tests.support.stats import wait_stats
from tests.support.wait import poll

pytestmark = [pytest.mark.integration, pytest.mark.ours_only]


def _threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise AssertionError("no Threads line")


def _all_serving(srv: GunicornServer) -> list[int]:
    """Wait until every worker has answered once (so each has announced itself)."""
    pids = set(srv.worker_pids())
    seen: set[int] = set()
    deadline = time.monotonic() + 10
    while seen != pids and time.monotonic() < deadline:
        seen.add(int(srv.get("/pid").text))
    assert seen == pids
    return sorted(pids)


def _busy_in_the_masters_view(stats_file: Path, busy: int, reserves: int = 0) -> None:
    """Wait for a stats report, written from now on, that counts ``busy`` slots in use and
    ``reserves`` reserves held."""
    wait_stats(stats_file, lambda s: s["busy"] == busy and s["reserves"] == reserves)


def _two_idle_workers(make_server: Any, tmp_path: Path) -> tuple[GunicornServer, Path, list[int]]:
    """A server of two workers writing a stats file; returns (server, stats file, worker
    pids) once both have served and the master counts them idle."""
    stats_file = tmp_path / "stats.json"
    srv: GunicornServer = make_server(workers=2, env={"FDPASS_STATS_FILE": str(stats_file)})
    pids = _all_serving(srv)
    _busy_in_the_masters_view(stats_file, 0)
    return srv, stats_file, pids


def _occupy_both_workers(srv: GunicornServer, pool: ThreadPoolExecutor, stats_file: Path,
                         first_s: float, second_s: float) -> tuple[Future[Any], Future[Any]]:
    """Start ``/sleep`` requests of these lengths, one per worker, in this order (the master
    counts the first busy before the second is sent, so they are picked in order)."""
    first = pool.submit(srv.get, f"/sleep?s={first_s:g}", timeout=30)
    _busy_in_the_masters_view(stats_file, 1)
    second = pool.submit(srv.get, f"/sleep?s={second_s:g}", timeout=30)
    _busy_in_the_masters_view(stats_file, 2)
    return first, second


def test_connection_sent_to_a_worker_that_dies_before_taking_it_is_served_by_another(
        make_server, tmp_path: Path) -> None:
    # Stop it only once the master counts it free, or nothing would be sent to it.
    srv, stats_file, (stopped, other) = _two_idle_workers(make_server, tmp_path)
    os.kill(stopped, signal.SIGSTOP)  # it cannot take anything sent to it now
    try:
        n = 4
        answers: list[tuple[int, int]] = []
        lock = threading.Lock()

        def one(_: int) -> None:
            resp = srv.get("/sleep?s=0.05", timeout=30)
            with lock:
                answers.append((resp.status, int(resp.json()["pid"])))

        with ThreadPoolExecutor(n) as pool:
            futures = [pool.submit(one, i) for i in range(n)]
            # The healthy worker serves all but the one handed to the stopped worker.
            assert poll(lambda: len(answers) == n - 1), answers
            # That one really is stuck: in a report written after the healthy worker went
            # idle, the master still counts it at the stopped worker, and it is unanswered.
            wait_stats(stats_file, lambda s: s["busy_by_worker"] == {str(stopped): 1,
                                                                      str(other): 0})
            assert len(answers) == n - 1, answers
            os.kill(stopped, signal.SIGKILL)  # ...until the worker dies without taking it
            for f in futures:
                f.result(timeout=15)
    finally:
        try:
            os.kill(stopped, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert answers == [(200, other)] * n
    srv.wait_for_log(r"1 connection\(s\) it had not taken go to others", timeout=5)


def test_worker_at_its_fd_limit_refuses_and_another_worker_serves(make_server) -> None:
    srv: GunicornServer = make_server(workers=2)
    _all_serving(srv)
    full = int(srv.get("/fd-limit").text)
    served_by = [int(srv.get("/pid", timeout=10).text) for _ in range(6)]
    assert full not in served_by
    assert len(served_by) == 6
    srv.wait_for_log(r"could not receive a connection", timeout=5)


def test_single_worker_at_fd_limit_gets_503_not_a_hang(make_server) -> None:
    srv: GunicornServer = make_server(workers=1)
    srv.get("/fd-limit")
    resp = srv.get("/pid", timeout=10)
    assert resp.status == 503
    assert resp.header("Retry-After") == "1"


def test_master_stays_single_threaded_so_forks_are_safe(make_server) -> None:
    """No dispatcher thread: forking workers can neither deadlock nor warn (Python 3.12+)."""
    srv: GunicornServer = make_server(workers=2, env={"PYTHONWARNINGS": "always"})
    assert _threads(srv.pid) == 1
    victim = srv.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    srv.wait_for_workers(2, exclude=[victim])
    assert srv.get("/").status == 200
    assert _threads(srv.pid) == 1
    assert "multi-threaded" not in srv.log_text()


def test_reserve_behind_a_slow_request_moves_to_the_worker_that_frees_up_first(
        make_server, tmp_path: Path) -> None:
    """Both workers busy; the next connection becomes the reserve of the worker picked
    longest ago, the slow one. When the other worker finishes, the master takes the reserve
    back out of the slow worker's inbox and hands it over: it does not wait for the slow
    request."""
    srv, stats_file, _ = _two_idle_workers(make_server, tmp_path)
    with ThreadPoolExecutor(3) as pool:
        # The short one outlasts the wait for the next stats report (one per second).
        slow, short = _occupy_both_workers(srv, pool, stats_file, 7, 2.5)
        started = time.monotonic()
        reserve = pool.submit(lambda: srv.get("/pid", timeout=30))
        reserve_pid = int(reserve.result(timeout=30).text)
        waited = time.monotonic() - started
        assert not slow.done(), "the slow request ended first: nothing was proven"
        short_pid = int(short.result().json()["pid"])
        slow_pid = int(slow.result().json()["pid"])
    assert slow_pid != short_pid
    assert reserve_pid == short_pid, "the reserve waited for the slow worker"
    assert waited < 4.0
    # It was taken back out of the slow worker's inbox, not sent to the free worker at once.
    assert poll(lambda: json.loads(stats_file.read_text())["requeued"] >= 1, timeout=5), (
        stats_file.read_text())


def test_reserve_of_a_killed_worker_is_served_by_its_replacement(
        make_server, tmp_path: Path) -> None:
    """A worker is SIGKILLed while a reserve waits unread in its inbox: only the request it
    was serving is lost; the master takes the reserve back and the replacement serves it,
    without waiting for the other (busy) worker."""
    srv, stats_file, before = _two_idle_workers(make_server, tmp_path)
    with ThreadPoolExecutor(3) as pool:
        doomed, busy = _occupy_both_workers(srv, pool, stats_file, 8, 8)
        reserve = pool.submit(lambda: srv.get("/pid", timeout=30))
        # Both slots in use; the reserve sits in a worker's inbox.
        _busy_in_the_masters_view(stats_file, 2, reserves=1)
        # The reserve went to the worker picked longest ago: the one serving `doomed`.
        by_worker = json.loads(stats_file.read_text())["reserves_by_worker"]
        holder = next(int(pid) for pid, n in by_worker.items() if n == 1)
        os.kill(holder, signal.SIGKILL)
        started = time.monotonic()
        served_by = int(reserve.result(timeout=30).text)
        waited = time.monotonic() - started
        assert not busy.done(), "the other worker finished first: nothing was proven"
        assert busy.result().status == 200
        with pytest.raises(Exception):  # noqa: B017  # the killed worker's own request
            doomed.result()
    assert served_by not in before, "served by an old worker, not the replacement"
    assert waited < 6.0
