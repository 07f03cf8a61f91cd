"""Process-level behaviour: concurrency, threads, the worker timeout, lifecycle hooks, entry
point, startup validation and fd hygiene. kill -9, max_requests and TERM are in
test_lifecycle.py."""

from __future__ import annotations

import importlib.metadata
import itertools
import os
import re
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import attach_server
from tests.support.http import IncompleteResponse, build_request
from tests.support.server import (
    GunicornServer,
    ServerError,
    assert_worker_owns_only_its_channel,
    listen_inode,
    socket_inodes,
    tcp_inodes,
    worker_class_under_test,
)
from tests.support.wait import poll, read_text

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(module_server_factory) -> GunicornServer:
    """Two plain workers, shared by tests that do not disturb the server."""
    return module_server_factory(workers=2)


@pytest.fixture
def srv(server: GunicornServer, request: pytest.FixtureRequest) -> GunicornServer:
    attach_server(request, server)
    assert server.returncode is None, "the shared server died:\n" + server.log_text()
    return server


# -- concurrency ------------------------------------------------------------------

def test_more_concurrent_clients_than_workers(srv):
    n = 40
    barrier = threading.Barrier(n, timeout=10)

    def one(i: int):
        barrier.wait()
        return srv.get("/sleep?s=0.05", timeout=30)

    with ThreadPoolExecutor(max_workers=n) as pool:
        results = list(pool.map(one, range(n)))
    assert [r.status for r in results] == [200] * n
    pids = Counter(r.json()["pid"] for r in results)
    assert set(pids) <= set(srv.booted_pids())
    assert len(pids) == 2, f"both workers should have served requests: {pids}"
    # Work was done in parallel by the two processes: some pair of requests overlapped.
    spans = sorted((r.json()["start"], r.json()["end"], r.json()["pid"]) for r in results)
    assert any(a[1] > b[0] and a[2] != b[2] for a, b in itertools.pairwise(spans)), spans


def test_threads_give_concurrency_in_one_worker(make_server):
    srv = make_server(workers=1, threads=4)
    n = 4
    barrier = threading.Barrier(n, timeout=10)

    def one(i: int):
        barrier.wait()
        return srv.get("/sleep?s=0.3", timeout=30)

    with ThreadPoolExecutor(max_workers=n) as pool:
        results = list(pool.map(one, range(n)))
    assert [r.status for r in results] == [200] * n
    data = [r.json() for r in results]
    assert len({d["pid"] for d in data}) == 1, "one worker"
    assert len({d["thread"] for d in data}) == n, "each request on its own thread"
    # All four were sleeping at the same time: the latest start precedes the earliest end.
    assert max(d["start"] for d in data) < min(d["end"] for d in data), data
    env = srv.get("/environ").json()
    assert env["wsgi.multithread"] is True


# -- worker lifecycle -----------------------------------------------------------------

@pytest.mark.xfail(worker_class_under_test() == "gthread", strict=False,
                   reason="gthread heartbeats from its main loop: a stuck request thread is "
                          "not a stuck worker, so --timeout never fires")
def test_timeout_kills_stuck_worker(make_server):
    srv = make_server(workers=2, args=["--timeout", "2"])
    start = srv.log_size()
    result: dict[str, object] = {}

    def stuck():
        t0 = time.monotonic()
        try:
            result["resp"] = srv.get("/sleep?s=60", timeout=12)
        except (IncompleteResponse, ConnectionError) as e:
            result["error"] = e
        except TimeoutError as e:
            result["timeout"] = e
        result["elapsed"] = time.monotonic() - t0

    t = threading.Thread(target=stuck)
    t.start()
    try:
        # While one worker is stuck, the server keeps answering.
        deadline = time.monotonic() + 20
        answered = 0
        while t.is_alive() and time.monotonic() < deadline:
            resp = srv.get("/", timeout=10)
            assert resp.status == 200
            answered += 1
            time.sleep(0.05)  # a steady trickle of requests, not a flood, meanwhile
    finally:
        t.join(timeout=40)
    assert not t.is_alive()
    assert "timeout" not in result, "the stuck request was never aborted"
    resp = result.get("resp")
    if resp is not None:  # a server may answer 5xx instead of dropping the connection
        assert resp.status >= 500, resp
    assert result["elapsed"] < 12, result
    assert answered > 0
    srv.wait_for_log(r"WORKER TIMEOUT", timeout=5, start=start)
    srv.wait_for_workers(2, timeout=10)
    for _ in range(10):
        assert srv.get("/").status == 200


LIFECYCLE_CONFIG = """
import os

HOOKS_FILE = {hooks!r}

def _log(line):
    with open(HOOKS_FILE, "a") as fh:
        fh.write(line + "\\n")

def when_ready(server):
    _log("when_ready %d" % os.getpid())

def post_fork(server, worker):
    _log("post_fork %d" % worker.pid)

def post_worker_init(worker):
    _log("post_worker_init %d" % os.getpid())

def child_exit(server, worker):
    _log("child_exit %d by=%d" % (worker.pid, os.getpid()))

def worker_exit(server, worker):
    _log("worker_exit %d by=%d" % (worker.pid, os.getpid()))
"""


def test_user_lifecycle_hooks_run(make_server, tmp_path):
    hooks = tmp_path / "lifecycle.log"
    srv = make_server(workers=2, config=LIFECYCLE_CONFIG.format(hooks=str(hooks)))
    workers = srv.wait_for_workers(2)
    master = srv.pid

    def has(*lines):
        text = read_text(hooks)
        return all(ln in text.splitlines() for ln in lines)
    assert poll(lambda: has(f"when_ready {master}", *[f"post_fork {w}" for w in workers],
                            *[f"post_worker_init {w}" for w in workers])), read_text(hooks)
    assert srv.get("/").status == 200
    rc = srv.stop(timeout=15)
    assert rc == 0, srv.log_text()
    exits = [f"worker_exit {w} by={w}" for w in workers]
    reaped = [f"child_exit {w} by={master}" for w in workers]
    assert poll(lambda: has(*exits, *reaped)), read_text(hooks)


# -- entry point --------------------------------------------------------------------

def _entry_point_installed() -> bool:
    try:
        dist = importlib.metadata.distribution("gunicorn-fdpass")
    except importlib.metadata.PackageNotFoundError:
        return False
    return any(ep.group == "gunicorn.workers" and ep.name == "fdpass" for ep in dist.entry_points)


@pytest.mark.skipif(not _entry_point_installed(),
                    reason="gunicorn-fdpass is not installed (pip install -e .)")
def test_egg_entry_point_worker(make_server):
    srv = make_server(workers=1, worker_class="egg:gunicorn-fdpass#fdpass")
    resp = srv.get("/")
    assert resp.status == 200
    assert resp.body == b"Hello, World!\n"
    assert re.search(r"Using worker: egg:gunicorn-fdpass#fdpass", srv.log_text())


# -- our worker only -------------------------------------------------------------------

@pytest.mark.ours_only
@pytest.mark.parametrize("how", ["config", "cli"])
def test_reuse_port_is_refused(tmp_path, how, request):
    kwargs: dict[str, object] = {"workers": 1, "wait_ready": False}
    if how == "config":
        kwargs["config"] = "reuse_port = True\n"
    else:
        kwargs["args"] = ["--reuse-port"]
    srv = GunicornServer(**kwargs)  # type: ignore[arg-type]
    attach_server(request, srv)
    try:
        srv.start()
        try:
            rc = srv.wait(timeout=20)
        except ServerError:
            pytest.fail("gunicorn with reuse_port kept running:\n" + srv.log_text())
        assert rc != 0
        assert "reuse_port" in srv.log_text() or "reuse-port" in srv.log_text()
    finally:
        srv.stop()
        srv.cleanup()


def _wait_idle(srv: GunicornServer, timeout: float = 5.0) -> list[int]:
    """Wait until no worker holds a TCP socket (all requests finished); returns the
    worker pids. Fails if that does not happen."""
    tcp = None

    def idle():
        nonlocal tcp
        tcp = tcp_inodes()
        pids = srv.worker_pids()
        for pid in pids:
            if set(socket_inodes(pid).values()) & set(tcp):
                return None
        return pids
    pids = poll(idle, timeout=timeout)
    assert pids, "a worker still holds a TCP socket while idle: %s" % {
        p: sorted(set(socket_inodes(p).values()) & set(tcp or {})) for p in srv.worker_pids()}
    return pids


@pytest.mark.ours_only
def test_only_master_holds_listening_socket(srv):
    inode = listen_inode(srv.port)
    assert inode in socket_inodes(srv.pid).values(), "master lacks the listening socket"
    pids = srv.wait_for_workers(2)
    for pid in pids:
        assert inode not in socket_inodes(pid).values(), f"worker {pid} holds the listener"
    # Also from the worker's own point of view, while it serves a request.
    fds = srv.get("/fds").json()
    targets = {f["target"] for f in fds["fds"]}
    assert f"socket:[{inode}]" not in targets


@pytest.mark.ours_only
def test_workers_hold_only_their_own_channel(srv):
    # exercise the workers first, then let them go idle
    for _ in range(10):
        assert srv.get("/").status == 200
    pids = _wait_idle(srv)
    assert len(pids) == 2
    listen = listen_inode(srv.port)
    for pid in pids:
        assert listen not in socket_inodes(pid).values()
        assert_worker_owns_only_its_channel(pid, pids, srv.pid)


@pytest.mark.ours_only
def test_worker_fd_count_stable_after_many_requests(srv):
    """No fd leak in workers: the fd set after 200 requests equals the one before."""
    pids = _wait_idle(srv)
    before = {pid: sorted(os.listdir(f"/proc/{pid}/fd"), key=int) for pid in pids}
    for _ in range(200):
        assert srv.get("/").status == 200
    with ThreadPoolExecutor(max_workers=8) as pool:
        assert all(r.status == 200 for r in pool.map(lambda _: srv.get("/sleep?s=0.01"),
                                                      range(40)))
    pids_after = _wait_idle(srv)
    assert sorted(pids_after) == sorted(pids)
    after = {pid: sorted(os.listdir(f"/proc/{pid}/fd"), key=int) for pid in pids}
    assert before == after


@pytest.mark.ours_only
def test_master_does_not_leak_client_sockets(srv):
    """After clients have closed their connections, the master holds no established
    TCP socket to them (parked keep-alive connections are released on EOF)."""
    conns = [srv.connect() for _ in range(5)]
    for c in conns:
        assert c.request("GET", "/").status == 200
    for c in conns:
        c.close()
    listen = listen_inode(srv.port)

    def master_clean():
        tcp = tcp_inodes()
        mine = set(socket_inodes(srv.pid).values()) & set(tcp)
        return mine <= {listen}
    assert poll(master_clean, timeout=10), {
        i: tcp_inodes().get(i) for i in socket_inodes(srv.pid).values() if i in tcp_inodes()}


@pytest.mark.keepalive
def test_http10_keepalive_connection_header(srv):
    with srv.connect() as conn:
        conn.send(build_request("GET", "/", headers={"Connection": "keep-alive"},
                                version="HTTP/1.0", host=None))
        resp = conn.read_response()
        assert resp.status == 200
        assert resp.body == b"Hello, World!\n"
        assert resp.keep_alive  # asked for and granted (sync, which never grants it, skips)
        resp2 = conn.request("GET", "/pid", headers={"Connection": "close"},
                             version="HTTP/1.0")
        assert resp2.status == 200 and not resp2.keep_alive
        assert conn.wait_closed(timeout=5)


def test_worker_class_under_test_is_used(srv):
    wc = worker_class_under_test()
    assert (f"Using worker: {wc}") in srv.log_text()



@pytest.mark.ours_only
def test_the_explicit_hooks_module_in_a_config_file_still_works(make_server) -> None:
    """``from gunicorn_fdpass.hooks import when_ready`` in a config file (the documented way to
    wire the master by hand) keeps working beside the hook the worker class installs: one
    dispatcher, requests served."""
    srv = make_server(workers=1,
                      config="from gunicorn_fdpass.hooks import when_ready  # noqa: F401\n")
    assert srv.get("/").status == 200
    assert srv.log_text().count("fdpass dispatcher running in the master") == 1
