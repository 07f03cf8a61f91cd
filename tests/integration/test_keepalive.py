"""Keep-alive through the master, slow clients, timeouts, back-pressure, shedding, TLS."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.http import RawHTTPConnection, build_request
from tests.support.server import GunicornServer
from tests.support.stats import read_stats, wait_stats

pytestmark = [pytest.mark.integration, pytest.mark.ours_only]


def _get_on(conn: RawHTTPConnection, target: str = "/pid") -> tuple[int, str, bool]:
    resp = conn.request("GET", target, {"Host": "127.0.0.1"})
    return resp.status, resp.text, resp.keep_alive


def test_many_keepalive_clients_reuse_their_connections(make_server) -> None:
    """40 clients x 25 requests on 2 workers: every answer, and no reconnect."""
    srv: GunicornServer = make_server(workers=2)

    def client(_: int) -> list[int]:
        pids = []
        with srv.connect() as conn:
            local = conn.sock.getsockname()
            for _ in range(25):
                status, text, keep = _get_on(conn)
                assert status == 200 and keep
                pids.append(int(text))
            assert conn.sock.getsockname() == local  # the same connection throughout
        return pids

    with ThreadPoolExecutor(40) as pool:
        results = list(pool.map(client, range(40)))
    served = [pid for pids in results for pid in pids]
    assert len(served) == 1000
    assert set(served) == set(srv.worker_pids())  # keep-alive did not pin one worker


def test_silent_and_half_sent_connections_cost_no_worker(make_server) -> None:
    srv: GunicornServer = make_server(workers=2)
    idle: list[socket.socket] = []
    try:
        for i in range(128):
            s = socket.create_connection(("127.0.0.1", srv.port))
            if i % 2:
                s.sendall(b"GET /pid HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # never finished
            idle.append(s)
        start = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda _: srv.get("/pid", timeout=10).status, range(200)))
        elapsed = time.monotonic() - start
    finally:
        for s in idle:
            s.close()
    assert statuses == [200] * 200
    # sync and gthread answer none of these until their timeout (30 s) fires.
    assert elapsed < 10, elapsed


def test_idle_parked_connection_closes_after_keep_alive_seconds(make_server) -> None:
    srv: GunicornServer = make_server(workers=1, args=["--keep-alive", "1"])
    with srv.connect() as conn:
        assert _get_on(conn)[0] == 200
        start = time.monotonic()
        assert conn.wait_closed(timeout=5)
        waited = time.monotonic() - start
    assert 0.8 <= waited < 3, waited


def test_keep_alive_zero_closes_after_each_response(make_server) -> None:
    srv: GunicornServer = make_server(workers=1, args=["--keep-alive", "0"])
    with srv.connect() as conn:
        status, _, keep = _get_on(conn)
        assert status == 200 and not keep
        assert conn.wait_closed(timeout=5)


def test_partial_head_gets_408_from_the_master(make_server) -> None:
    srv: GunicornServer = make_server(workers=1, env={"FDPASS_HEAD_TIMEOUT": "0.5"})
    with srv.connect() as conn:
        conn.send(b"GET /pid HTTP/1.1\r\nHost: x\r\n")
        resp = conn.read_response(timeout=5)
    assert resp.status == 408
    assert srv.get("/pid").status == 200


def test_parked_connections_survive_worker_restarts(make_server, stats_path: Path) -> None:
    srv: GunicornServer = make_server(workers=2, args=["--keep-alive", "30"],
                                      env={"FDPASS_STATS_FILE": str(stats_path)})
    conns = [srv.connect() for _ in range(6)]
    try:
        for conn in conns:
            assert _get_on(conn)[0] == 200
        # A worker hands an idle connection back right after its response; kill the workers
        # only once the master holds all six (before that, a worker's death takes the
        # connection it still holds with it).
        wait_stats(stats_path, lambda s: s["parked"] == 6)
        old = srv.worker_pids()
        for pid in old:
            os.kill(pid, signal.SIGKILL)
        srv.wait_for_workers(2, exclude=old)
        for conn in conns:
            status, text, _ = _get_on(conn)
            assert status == 200 and int(text) not in old
        srv.signal(signal.SIGHUP)
        srv.wait_for_log(r"Hang up: Master", timeout=10)
        for conn in conns:
            assert _get_on(conn)[0] == 200
    finally:
        for conn in conns:
            conn.close()


def test_parked_connections_survive_max_requests_recycling(make_server) -> None:
    srv: GunicornServer = make_server(workers=2, args=["--max-requests", "3"])
    with srv.connect() as conn:
        pids = [int(_get_on(conn)[1]) for _ in range(20)]
    assert len(set(pids)) >= 5  # workers were recycled underneath one connection


def test_queue_bound_holds_under_a_connection_flood(make_server, stats_path: Path) -> None:
    srv: GunicornServer = make_server(workers=1, env={"FDPASS_MAX_QUEUE": "5",
                                                      "FDPASS_STATS_FILE": str(stats_path)})
    n = 60
    stop = threading.Event()
    peak = {"queued": 0.0}

    def sample() -> None:
        while not stop.is_set():
            stats = read_stats(stats_path)
            if stats:
                peak["queued"] = max(peak["queued"], stats["queued"])
            stop.wait(0.05)  # sampling interval; the file changes once a second

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with ThreadPoolExecutor(n) as pool:
            statuses = list(pool.map(lambda _: srv.get("/sleep?s=0.05", timeout=60).status,
                                     range(n)))
    finally:
        stop.set()
        sampler.join()
    assert statuses == [200] * n  # nobody lost: the rest waited in the kernel backlog
    assert 1 <= peak["queued"] <= 5, peak


def test_shedding_answers_503_fast(make_server) -> None:
    srv: GunicornServer = make_server(workers=1, env={"FDPASS_SHED_QUEUE": "2",
                                                      "FDPASS_RETRY_AFTER": "3"})

    def one(_: int) -> tuple[int, float, str | None]:
        start = time.monotonic()
        resp = srv.get("/sleep?s=1", timeout=30)
        return resp.status, time.monotonic() - start, resp.header("Retry-After")

    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(one, range(10)))
    shed = [r for r in results if r[0] == 503]
    served = [r for r in results if r[0] == 200]
    assert shed and served
    assert len(shed) + len(served) == 10
    assert all(elapsed < 0.9 and retry == "3" for _, elapsed, retry in shed), shed
    srv.wait_for_log(r"load shedding: 503", timeout=5)


@pytest.mark.parametrize("env,message", [
    ({"FDPASS_HEAD_TIMOUT": "5"}, "unknown setting FDPASS_HEAD_TIMOUT"),
    ({"FDPASS_MAX_QUEUE": "lots"}, "bad value for FDPASS_MAX_QUEUE"),
    ({"FDPASS_SHED_WAIT": "-1"}, "bad value for FDPASS_SHED_WAIT"),
])
def test_bad_fdpass_setting_stops_startup_with_its_name(env: dict[str, str], message: str
                                                       ) -> None:
    srv = GunicornServer(workers=1, env=env, wait_ready=False)
    try:
        srv.start()
        assert srv.wait(timeout=15) != 0
        assert message in srv.log_text()
    finally:
        srv.stop(timeout=5)
        srv.cleanup()


def test_settings_from_config_file_raw_env(make_server, tmp_path: Path) -> None:
    srv: GunicornServer = make_server(
        workers=1, config='raw_env = ["FDPASS_HEAD_TIMEOUT=0.4"]\n')
    with srv.connect() as conn:
        conn.send(b"GET / HTTP/1.1\r\n")
        start = time.monotonic()
        assert conn.read_response(timeout=5).status == 408
    assert time.monotonic() - start < 2


# -- TLS ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, str]]:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    d = tmp_path_factory.mktemp("tls")
    certfile, keyfile, cafile = d / "cert.pem", d / "key.pem", d / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    ca.cert_pem.write_to_path(str(cafile))
    yield str(certfile), str(keyfile), str(cafile)


def test_tls_is_served_closed_after_each_response_and_idle_tls_costs_no_worker(
        make_server, tls_files: tuple[str, str, str]) -> None:
    certfile, keyfile, cafile = tls_files
    srv: GunicornServer = make_server(workers=1, wait_ready=False,
                                      args=["--certfile", certfile, "--keyfile", keyfile])
    srv.wait_for_workers(1)
    context = ssl.create_default_context(cafile=cafile)
    idle = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(8)]
    try:
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as raw, \
                    context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(build_request("GET", "/environ", {"Host": "127.0.0.1"}))
                data = b""
                while chunk := tls.recv(65536):
                    data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ")
            assert b"\r\nConnection: close" in head  # TLS sessions are never parked
            assert json.loads(body)["wsgi.url_scheme"] == "https"
    finally:
        for s in idle:
            s.close()


def test_slow_request_body_holds_a_worker_only_until_the_io_timeout(make_server,
                                                                     stats_path: Path) -> None:
    """What still occupies a worker: a body larger than FDPASS_BODY_BUFFER (smaller ones wait
    in the master) that stops arriving. FDPASS_IO_TIMEOUT bounds it."""
    srv: GunicornServer = make_server(workers=1, env={"FDPASS_IO_TIMEOUT": "2",
                                                      "FDPASS_STATS_FILE": str(stats_path)})
    with srv.connect() as stalled:
        sent_at = time.time()
        stalled.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
                     + b"x" * 10)
        # The stalled upload holds the only worker slot (as the master reports it)...
        wait_stats(stats_path, lambda s: s["busy"] == 1, after=sent_at)
        start = time.monotonic()
        resp = srv.get("/pid", timeout=10)  # ...so this one waits for it
        waited = time.monotonic() - start
        assert resp.status == 200
        assert waited < 5, waited  # freed by the I/O timeout, not by the 30 s worker timeout
        assert stalled.wait_closed(timeout=5)
    assert time.time() - sent_at >= 2  # the slot was held until the timeout, not released early
