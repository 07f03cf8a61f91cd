"""The master's live numbers: statsd metrics, the stats file, the debug log (one line at most
per report, none while nothing changes)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from tests.support.server import GunicornServer
from tests.support.stats import SETTLED_KEYS, wait_stats

pytestmark = [pytest.mark.integration, pytest.mark.ours_only]


def test_statsd_receives_the_dispatchers_metrics(make_server) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        udp.settimeout(0.2)
        port = udp.getsockname()[1]
        srv: GunicornServer = make_server(workers=2, args=["--statsd-host", f"127.0.0.1:{port}"])
        for _ in range(20):
            assert srv.get("/pid").status == 200
        names: dict[str, str] = {}
        deadline = time.monotonic() + 10
        wanted = {"fdpass.queued", "fdpass.parked", "fdpass.waiting_for_head", "fdpass.busy",
                  "fdpass.reserves", "fdpass.workers", "fdpass.dispatched", "fdpass.accepted",
                  "fdpass.queue_wait_max_ms"}
        def per_worker() -> bool:
            return any(n.startswith("fdpass.worker.") and n.endswith(".busy") for n in names)

        while not (wanted <= names.keys() and per_worker()) and time.monotonic() < deadline:
            try:
                packet = udp.recv(65536).decode()
            except TimeoutError:
                continue
            for line in packet.splitlines():
                name, _, rest = line.partition(":")
                names[name] = rest
    assert wanted <= names.keys(), sorted(names)
    assert names["fdpass.workers"].endswith("|g")
    assert "|c" in names["fdpass.dispatched"]
    assert per_worker(), sorted(names)


def test_stats_file_has_the_live_numbers(make_server, tmp_path: Path) -> None:
    path = tmp_path / "stats.json"
    srv: GunicornServer = make_server(workers=2, env={"FDPASS_STATS_FILE": str(path)})
    start = time.time()
    for _ in range(10):
        assert srv.get("/pid").status == 200
    stats = wait_stats(path, lambda s: s["dispatched"] >= 10, after=start)
    assert stats["pid"] == srv.pid
    assert stats["workers"] == 2
    assert stats["accepted"] >= 10
    assert set(map(int, stats["busy_by_worker"])) == set(srv.worker_pids())
    assert set(map(int, stats["reserves_by_worker"])) == set(srv.worker_pids())
    assert stats["reserves"] == 0


def test_debug_log_has_one_line_of_numbers_and_none_while_idle(
        make_server, tmp_path: Path) -> None:
    path = tmp_path / "stats.json"
    srv: GunicornServer = make_server(workers=1, log_level="debug",
                                      env={"FDPASS_STATS_FILE": str(path)})
    assert srv.get("/pid").status == 200
    # Gauges and the counters that moved share one line.
    srv.wait_for_log(r"fdpass queued=0 parked=\d+ waiting_for_head=0 busy=\d+ reserves=0 "
                     r"workers=1 .*dispatched\+\d+", timeout=5)
    assert "fdpass.queued" not in srv.log_text()  # no line per number any more

    idle = wait_stats(path, lambda s: s["dispatched"] >= 1
                      and all(s[k] == 0 for k in SETTLED_KEYS), after=0)
    # The line of the idle report is written before its stats file. Three more reports of
    # the same numbers follow: not one more line.
    mark = srv.log_size()
    wait_stats(path, lambda s: s["time"] >= idle["time"] + 2.5, after=0)
    assert "fdpass queued=" not in srv.log_text()[mark:]
