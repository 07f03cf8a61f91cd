"""Signals to the master and worker faults under a bounded load: nothing is lost."""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.http import RawHTTPConnection
from tests.support.load import Load, connect_refused
from tests.support.server import GunicornServer, pid_alive
from tests.support.wait import poll

pytestmark = [pytest.mark.integration, pytest.mark.ours_only]


def _assert_nothing_lost(load: Load) -> None:
    result = load.stop()
    assert result.lost == [], result
    assert result.sent == result.answered > 0
    assert set(result.statuses) == {200}, result.statuses


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
    way). tests/test_integration_deploy.py covers USR2 of a ``python -m gunicorn`` master.
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


def test_term_finishes_queued_and_in_flight_requests_then_exits_0(make_server) -> None:
    srv: GunicornServer = make_server(workers=1, graceful_timeout=10)
    idle = srv.connect()
    assert idle.request("GET", "/pid", {"Host": "x"}).status == 200  # parked, idle
    with ThreadPoolExecutor(5) as pool:
        futures = [pool.submit(srv.get, "/sleep?s=0.3", timeout=30) for _ in range(5)]
        assert poll(lambda: "sleeping" in srv.get("/", timeout=5).text or True, 1)
        time.sleep(0.1)  # let all five reach the master before TERM
        srv.signal(signal.SIGTERM)
        term_at = time.monotonic()
        assert poll(lambda: connect_refused(srv.port) or srv.returncode is not None, 5)
        stopped_accepting = time.monotonic() - term_at
        statuses = [f.result(timeout=30).status for f in futures]
    assert statuses == [200] * 5
    assert idle.wait_closed(timeout=5)  # parked idle connection closed cleanly
    idle.close()
    assert srv.wait(timeout=15) == 0
    assert stopped_accepting < 2.5, stopped_accepting


@pytest.mark.parametrize("sig", [signal.SIGQUIT, signal.SIGINT])
def test_quit_and_int_stop_fast(make_server, sig: int) -> None:
    srv: GunicornServer = make_server(workers=1, graceful_timeout=30)
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(lambda: srv.get("/sleep?s=20", timeout=30))
        time.sleep(0.3)
        start = time.monotonic()
        srv.signal(sig)
        srv.wait(timeout=10)
        assert time.monotonic() - start < 5
        with pytest.raises(Exception):  # noqa: B017 - the in-flight request is cut off
            slow.result(timeout=10)


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


def test_kill_9_of_a_worker_loses_at_most_its_in_flight_request(make_server) -> None:
    srv: GunicornServer = make_server(workers=2)
    with Load(srv.port, clients=16) as load:
        load.wait_answered(40)
        victim = srv.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        srv.wait_for_workers(2, exclude=[victim])
        load.wait_answered(40)
    result = load.stop()
    assert len(result.lost) <= 1, result  # capacity 1: one request was in flight there
    assert result.answered >= result.sent - 1


def test_max_requests_recycles_workers_under_load_with_nothing_lost(make_server) -> None:
    srv: GunicornServer = make_server(workers=2, args=["--max-requests", "10",
                                                       "--max-requests-jitter", "5"])
    first = set(srv.worker_pids())
    with Load(srv.port, clients=8, target="/sleep?s=0.01") as load:
        assert poll(lambda: len({int(p) for p in load.result.pids} - first) >= 4, 30)
    _assert_nothing_lost(load)


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
