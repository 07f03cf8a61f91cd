"""Signals to the master and worker faults, mostly under a bounded load: nothing is lost.

The kill -9, max_requests and TERM tests run against every worker class the harness can
test (``FDPASS_TEST_WORKER_CLASS``): the service survives; what only this worker promises
(nothing lost, queued requests served on a stop) is asserted when ``ours``.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.http import RawHTTPConnection
from tests.support.load import Load, connect_refused
from tests.support.server import GunicornServer, pid_alive
from tests.support.stats import wait_stats
from tests.support.wait import poll, read_text

pytestmark = pytest.mark.integration


def _assert_nothing_lost(load: Load) -> None:
    result = load.stop()
    assert result.lost == [], result
    assert result.sent == result.answered > 0
    assert set(result.statuses) == {200}, result.statuses


@pytest.mark.ours_only
def test_hup_reloads_workers_under_load_and_keeps_parked_connections(make_server) -> None:
    srv: GunicornServer = make_server(workers=2, args=["--keep-alive", "30"])
    old = set(srv.worker_pids())
    with srv.connect() as idle_conn:
        assert idle_conn.request("GET", "/pid", {"Host": "x"}).status == 200  # now parked
        with Load(srv.port) as load:
            load.wait_answered(40)
            srv.signal(signal.SIGHUP)
            assert poll(lambda: not old & set(srv.worker_pids())), srv.worker_pids()
            load.wait_answered(40)
        _assert_nothing_lost(load)
        assert {int(p) for p in load.result.pids} - old  # new workers took new work
        resp = idle_conn.request("GET", "/pid", {"Host": "x"})  # the parked one still works
        assert resp.status == 200 and int(resp.text) not in old


@pytest.mark.ours_only
def test_ttin_and_ttou_change_the_worker_count_under_load(make_server) -> None:
    srv: GunicornServer = make_server(workers=2)
    with Load(srv.port) as load:
        load.wait_answered(20)
        srv.signal(signal.SIGTTIN)
        assert poll(lambda: len(srv.worker_pids()) == 3)
        load.wait_answered(40)
        srv.signal(signal.SIGTTOU)
        assert poll(lambda: len(srv.worker_pids()) == 2)
        srv.signal(signal.SIGTTOU)  # one at a time: pending signals of a kind coalesce
        assert poll(lambda: len(srv.worker_pids()) == 1)
        load.wait_answered(40)
    _assert_nothing_lost(load)


class _ConsoleScriptServer(GunicornServer):
    """Started as in production: the ``gunicorn`` console script and a ``host:port`` bind.

    The harness's ``fd://N`` bind cannot survive USR2: Gunicorn re-creates that listener
    close-on-exec, so the new master cannot inherit it (its own sync worker fails the same
    way). tests/integration/test_deploy.py covers USR2 of a ``python -m gunicorn`` master.
    """

    @property
    def command(self) -> list[str]:
        cmd = super().command
        assert cmd[1:3] == ["-m", "gunicorn"]
        bind = cmd.index("--bind") + 1
        cmd[bind] = "127.0.0.1:0"
        return [str(Path(sys.executable).parent / "gunicorn"), *cmd[3:]]

    @property
    def port(self) -> int:
        found = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", self.log_text())
        assert found, self.log_text()
        return int(found.group(1))


@pytest.mark.ours_only
def test_usr2_binary_upgrade_then_term_old_master_loses_nothing() -> None:
    srv = _ConsoleScriptServer(workers=2)
    srv.start()
    try:
        _usr2_then_term(srv)
    finally:
        srv.stop(timeout=10)
        srv.cleanup()


def _usr2_then_term(srv: GunicornServer) -> None:
    old_master = srv.pid
    with Load(srv.port) as load:
        load.wait_answered(20)
        srv.signal(signal.SIGUSR2)
        assert poll(lambda: len(srv.booted_pids()) >= 4, timeout=15), srv.log_text()
        load.wait_answered(40)
        os.kill(old_master, signal.SIGTERM)
        assert poll(lambda: not pid_alive(old_master) or srv.returncode is not None, 20)
        load.wait_answered(40)  # the new master serves alone now
    _assert_nothing_lost(load)


def test_term_finishes_in_flight_and_queued_requests_then_exits_0(
        make_server: Callable[..., GunicornServer], tmp_path: Path, stats_path: Path,
        ours: bool) -> None:
    """SIGTERM while a request is in a worker: it is answered in full, idle keep-alive
    connections are closed cleanly, the master exits 0 and leaves no worker behind. With
    this worker the master also stops accepting at once and serves the requests it queued."""
    srv = make_server(workers=1, graceful_timeout=10, env={"FDPASS_STATS_FILE": str(stats_path)})
    workers = srv.wait_for_workers(1)
    marker = tmp_path / "inflight.txt"
    idle = srv.connect()
    assert idle.request("GET", "/pid", {"Host": "x"}).status == 200  # ours: parked, idle
    queued = 4 if ours else 0  # other classes leave them in the kernel's backlog: reset
    # ours: the master's count of accepted connections, before the requests of this test
    accepted = wait_stats(stats_path, lambda s: True)["accepted"] if ours else 0
    with ThreadPoolExecutor(1 + queued) as pool:
        # Long enough to be still in flight after the wait for the next stats report.
        in_flight = pool.submit(srv.get, f"/sleep?s=3&marker={marker}", timeout=30)
        assert poll(lambda: read_text(marker)), "the request never reached the worker"
        rest = [pool.submit(srv.get, "/sleep?s=0.3", timeout=30) for _ in range(queued)]
        if ours:
            # A client the master has not accepted yet is refused when it closes its
            # listeners; the queued ones must all be in the master's hands before TERM.
            wait_stats(stats_path, lambda s: s["accepted"] >= accepted + 1 + queued)
        assert not in_flight.done(), "the request ended before TERM: nothing was proven"
        srv.signal(signal.SIGTERM)
        term_at = time.monotonic()
        if ours:
            assert poll(lambda: connect_refused(srv.port) or srv.returncode is not None, 5)
            stopped_accepting = time.monotonic() - term_at
            assert stopped_accepting < 2.5, stopped_accepting
            assert [f.result(timeout=30).status for f in rest] == [200] * queued
        resp = in_flight.result(timeout=30)
    assert resp.status == 200 and resp.complete
    assert resp.json()["slept"] == 3.0  # type: ignore[index]
    assert idle.wait_closed(timeout=5)  # the idle connection was closed cleanly
    idle.close()
    assert srv.wait(timeout=15) == 0, srv.log_text()
    assert "Shutting down: Master" in srv.log_text()
    assert not any(pid_alive(w) for w in workers)


@pytest.mark.ours_only
@pytest.mark.parametrize("sig", [signal.SIGQUIT, signal.SIGINT])
def test_quit_and_int_stop_fast(make_server, tmp_path: Path, sig: int) -> None:
    srv: GunicornServer = make_server(workers=1, graceful_timeout=30)
    marker = tmp_path / "inflight.txt"
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(lambda: srv.get(f"/sleep?s=20&marker={marker}", timeout=30))
        assert poll(lambda: read_text(marker)), "the request never reached the worker"
        start = time.monotonic()
        srv.signal(sig)
        srv.wait(timeout=10)
        assert time.monotonic() - start < 5
        with pytest.raises(Exception):  # noqa: B017 - the in-flight request is cut off
            slow.result(timeout=10)


@pytest.mark.ours_only
def test_usr1_reopens_log_files(make_server, tmp_path: Path) -> None:
    access = tmp_path / "access.log"
    srv: GunicornServer = make_server(workers=1, args=["--access-logfile", str(access)])
    assert srv.get("/pid").status == 200
    assert poll(lambda: access.exists() and "GET /pid" in access.read_text())
    rotated = tmp_path / "access.log.1"
    access.rename(rotated)
    srv.signal(signal.SIGUSR1)
    srv.wait_for_log(r"Handling signal: usr1", timeout=5)
    assert poll(lambda: access.exists(), 5)  # the master reopened it
    assert poll(lambda: srv.get("/pid?after").status == 200 and
                 "GET /pid?after" in access.read_text(), 10)
    assert "GET /pid?after" not in rotated.read_text()


@pytest.mark.ours_only
def test_wsgi_errors_writes_to_the_reopened_error_log_after_usr1(make_server,
                                                                 tmp_path: Path) -> None:
    errors = tmp_path / "error.log"
    # A second error-log handler, a file (the harness reads the first, on stdout): wsgi.errors
    # writes to both, and USR1 reopens the file (closing its old stream).
    config = ("import logging\n\n"
              "def on_starting(server):\n"
              "    logging.getLogger('gunicorn.error').addHandler(\n"
              f"        logging.FileHandler({str(errors)!r}))\n")
    srv: GunicornServer = make_server(workers=1, config=config)
    assert srv.get("/errors?before-rotation").status == 200
    assert poll(lambda: "before-rotation" in read_text(errors))
    rotated = tmp_path / "error.log.1"
    errors.rename(rotated)
    srv.signal(signal.SIGUSR1)
    assert poll(lambda: errors.exists(), 5)  # the master reopened it
    # The worker handles USR1 too (its own reopen, which closes the old streams): from
    # then on its writes go to the new file.
    attempts: list[str] = []

    def written_to_the_new_file() -> bool:
        attempts.append(f"after-rotation-{len(attempts)}")
        return (srv.get(f"/errors?{attempts[-1]}").status == 200
                and attempts[-1] in read_text(errors))

    assert poll(written_to_the_new_file, 10)
    assert attempts[-1] not in rotated.read_text()


def test_kill_9_of_a_worker_under_load_is_replaced_and_loses_at_most_its_request(
        make_server: Callable[..., GunicornServer], ours: bool) -> None:
    srv = make_server(workers=2)
    victim = srv.wait_for_workers(2)[0]
    with Load(srv.port, clients=16) as load:
        load.wait_answered(40)
        os.kill(victim, signal.SIGKILL)  # a worker of the server this test started
        live = srv.wait_for_workers(2, exclude=[victim])  # a replacement booted
        load.wait_answered(40)  # the service goes on
    result = load.stop()
    assert set(result.statuses) == {200}, result.statuses
    if ours:
        assert len(result.lost) <= 1, result  # capacity 1: one request was in flight there
        assert result.answered >= result.sent - 1
    assert not pid_alive(victim) and victim not in live
    pids = {int(srv.get("/").header("X-Worker-Pid") or 0) for _ in range(30)}
    assert victim not in pids and pids <= set(srv.booted_pids()), pids
    assert srv.returncode is None


def test_max_requests_recycles_workers_one_by_one_and_under_load(
        make_server: Callable[..., GunicornServer], ours: bool) -> None:
    srv = make_server(workers=2, args=["--max-requests", "5", "--max-requests-jitter", "0"])
    first = set(srv.worker_pids())
    assert len(first) == 2
    seen = []
    for i in range(40):
        resp = srv.get("/pid", timeout=10)
        assert resp.status == 200, (i, resp)
        seen.append(int(resp.body))
    # 40 requests / 5 per worker life: at least 6 distinct worker processes served.
    counts = Counter(seen)
    assert len(counts) >= 6, counts
    # a worker that reached its limit may still finish the one request it already took
    assert max(counts.values()) <= 5 + 1, counts
    assert len(srv.booted_pids()) >= 8
    # the originals are gone and the server is back to 2 workers
    live = srv.wait_for_workers(2, timeout=10, exclude=first)
    assert not first & set(live)
    # Under a load, several more generations of workers come and go.
    served_before = set(srv.booted_pids())
    with Load(srv.port, clients=8, target="/sleep?s=0.01") as load:
        assert poll(lambda: len({int(p) for p in load.result.pids} - served_before) >= 4, 30)
    result = load.stop()
    assert set(result.statuses) == {200}, result.statuses
    if ours:
        _assert_nothing_lost(load)


@pytest.mark.ours_only
def test_worker_that_fails_to_boot_halts_with_gunicorns_exit_code_3(tmp_path: Path) -> None:
    srv = GunicornServer(workers=1, wait_ready=False, config=(
        "def post_worker_init(worker):\n"
        "    raise RuntimeError('boot failure for the test')\n"))
    try:
        srv.start()
        assert srv.wait(timeout=20) == 3
        log = srv.log_text()
        assert "boot failure for the test" in log
        assert "Worker failed to boot" in log
    finally:
        srv.stop(timeout=5)
        srv.cleanup()


@pytest.mark.ours_only
def test_master_survives_a_worker_that_hangs_up_its_channel(make_server) -> None:
    """A worker going away at any moment never takes the master with it."""
    srv: GunicornServer = make_server(workers=2)
    for _ in range(3):
        victim = srv.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        srv.wait_for_workers(2, exclude=[victim])
    conn = RawHTTPConnection("127.0.0.1", srv.port, timeout=10)
    with conn:
        assert conn.request("GET", "/pid", {"Host": "x"}).status == 200
    assert srv.returncode is None
