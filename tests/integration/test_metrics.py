"""The master's live numbers: statsd metrics, the stats file, the debug log."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from tests.support.server import GunicornServer
from tests.support.stats import wait_stats

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
                  "fdpass.workers", "fdpass.dispatched", "fdpass.accepted",
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


def test_debug_log_shows_the_numbers(make_server) -> None:
    srv: GunicornServer = make_server(workers=1, log_level="debug")
    assert srv.get("/pid").status == 200
    srv.wait_for_log(r"fdpass\.queued 0", timeout=5)
    srv.wait_for_log(r"fdpass\.dispatched \+\d+", timeout=5)
