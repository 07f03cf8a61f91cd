"""Issue 13 against a real Gunicorn master with this worker: slow request bodies cost no
worker, PROXY vectors and bytes that cannot begin a request are answered at once, closing is
polite (FIN, not RST), and a flood of half-sent heads cannot lock new clients out."""

from __future__ import annotations

import resource
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from tests.support.http import RawHTTPConnection, request
from tests.support.serve import parse
from tests.support.server import GunicornServer

pytestmark = [pytest.mark.integration, pytest.mark.ours_only, pytest.mark.timeout(120)]

FORM = b"field=" + b"v" * 4090  # a 4 KB form body
FORM_HEAD = (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-www-form-urlencoded"
             b"\r\nContent-Length: %d\r\n\r\n" % len(FORM))
HALF_HEAD = b"GET / HTTP/1.1\r\n"
# Gunicorn 27's PROXY vectors (tests/requests/{valid,invalid}/pp_*.http) as bytes. pp_03 is
# not in Gunicorn's tree: a PROXY v2 header with an unknown command stands in for it.
PP_01 = b"PROXY TCP4 192.168.0.1 192.16...\r\n"
PP_02_INVALID = b"PROXY TCP4 192.168.0.1 192.168.0.11 65iii 100000\r\n"
PP_03 = b"\r\n\r\n\x00\r\nQUIT\n\x23\x11\x00\x0c" + bytes(12)
# Gunicorn's valid pp_02, with a Host field in each request: this worker refuses an HTTP/1.1
# request without Host (docs/http-conformance.md), which has nothing to do with PROXY.
PP_02_VALID = (
    b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
    b"GET /stuff/here?foo=bar HTTP/1.1\r\nHost: t\r\nServer: http://127.0.0.1:5984\r\n"
    b"Content-Type: application/json\r\nContent-Length: 14\r\nConnection: keep-alive\r\n\r\n"
    b'{"nom": "nom"}'
    b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"1e\r\nall your base are belong to us\r\n0\r\n\r\n"
)
CLIENT_HELLO = bytes.fromhex("16030100c8010000c40303") + bytes(32) + b"\x00\x00\x02\x13\x01"


def connect(srv: GunicornServer, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=timeout)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything until the server's FIN; ConnectionResetError if it reset instead."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def timed_get(srv: GunicornServer, target: str = "/pid") -> float:
    started = time.monotonic()
    resp = request(srv.port, "GET", target, timeout=5)
    assert resp.status == 200
    return time.monotonic() - started


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    """Client sockets a test opens; all closed at its end."""
    socks: list[socket.socket] = []
    yield socks
    for s in socks:
        s.close()


@pytest.fixture
def raised_fd_limit() -> Iterator[int]:
    """Room for thousands of client sockets in this process (the server raises its own)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 16384) if hard != resource.RLIM_INFINITY else 16384
    if want < 7000:
        pytest.skip(f"the hard open-file limit ({hard}) is too low for this test")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    yield want
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_slow_bodies_cost_no_worker(make_server: Callable[..., GunicornServer]) -> None:
    """slowhttptest -B: 200 connections dribble a 4 KB form body; two workers stay free for
    ordinary requests throughout, and every slow upload is served once complete. (Before,
    the first two uploads held both workers until their bodies were complete.)"""
    srv = make_server(workers=2)
    slow = [RawHTTPConnection("127.0.0.1", srv.port, timeout=10) for _ in range(200)]
    try:
        for conn in slow:
            conn.send(FORM_HEAD + FORM[:16])
        latencies = []
        sent = 16
        while sent < len(FORM):
            piece = FORM[sent:sent + 256]
            for conn in slow:
                conn.send(piece)
            sent += len(piece)
            latencies.append(timed_get(srv))  # between two rounds of dribbling
        assert max(latencies) < 1.0, latencies
        for conn in slow:
            resp = conn.read_response("POST")
            assert resp.status == 200 and resp.body == FORM
    finally:
        for conn in slow:
            conn.close()


@pytest.fixture(scope="module")
def proxied(module_server_factory: Callable[..., GunicornServer]) -> GunicornServer:
    return module_server_factory(workers=2, args=[
        "--proxy-protocol", "auto", "--proxy-allow-from", "127.0.0.1"])


@pytest.mark.parametrize("vector", [PP_01, PP_02_INVALID, PP_03], ids=["pp_01", "pp_02", "pp_03"])
def test_gunicorns_invalid_proxy_vectors_get_400_at_once(proxied: GunicornServer,
                                                         vector: bytes) -> None:
    started = time.monotonic()
    with connect(proxied) as sock:
        sock.sendall(vector)
        raw = read_until_closed(sock)
    assert raw.startswith(b"HTTP/1.1 400 "), raw
    assert time.monotonic() - started < 2  # not after the 10 s head timeout


def test_gunicorns_valid_pp_02_serves_both_pipelined_requests(proxied: GunicornServer) -> None:
    with connect(proxied) as sock:
        sock.sendall(PP_02_VALID)
        sock.shutdown(socket.SHUT_WR)
        got, rest = parse(read_until_closed(sock), ["GET", "POST"])
    assert rest == b""
    assert [r.status for r in got] == [404, 200]  # /stuff/here is not a route of the app
    assert got[1].body == b"all your base are belong to us"


def test_tls_client_hello_on_a_plain_port_gets_400_at_once_and_one_warning(
        make_server: Callable[..., GunicornServer]) -> None:
    srv = make_server(workers=1)
    started = time.monotonic()
    with connect(srv) as sock:
        sock.sendall(CLIENT_HELLO)
        assert read_until_closed(sock).startswith(b"HTTP/1.1 400 ")
    assert time.monotonic() - started < 2
    srv.wait_for_log(r"WARNING\] TLS handshake from .* on a plain-HTTP port")
    assert srv.log_text().count("TLS handshake from") == 1


@pytest.mark.parametrize("junk", [b"hello wor", b"\x00\x01junk", b"GET / HTTP/1.1\r\nHo"],
                         ids=["a partial line", "control bytes", "a partial head"])
def test_a_half_close_after_junk_or_a_partial_head_ends_with_fin_not_reset(
        make_server: Callable[..., GunicornServer], junk: bytes) -> None:
    srv = make_server(workers=1)
    with connect(srv) as sock:
        sock.sendall(junk)
        sock.shutdown(socket.SHUT_WR)
        raw = read_until_closed(sock)  # raises ConnectionResetError on a reset
    if junk.startswith(b"\x00"):
        assert raw.startswith(b"HTTP/1.1 400 ")
    else:
        assert raw == b""  # as Gunicorn: a premature disconnection gets no answer


def test_after_an_answer_more_input_is_read_and_dropped_not_reset(
        make_server: Callable[..., GunicornServer]) -> None:
    srv = make_server(workers=1)
    with connect(srv) as sock:
        sock.sendall(b"\x00junk")
        assert read_until_closed(sock).startswith(b"HTTP/1.1 400 ")
        sock.sendall(b"x" * 50000)  # the client had more on its way
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1) == b""  # still a clean end: the master read it all


def test_3000_half_sent_heads_do_not_lock_out_new_clients(
        make_server: Callable[..., GunicornServer], raised_fd_limit: int,
        sockets: list[socket.socket]) -> None:
    """Before issue 13 the master stopped accepting at --worker-connections (1000)."""
    srv = make_server(workers=2)
    srv.wait_for_log(r"fdpass: the master holds at most \d+ connections")
    for _ in range(3000):
        sock = connect(srv)
        sock.sendall(HALF_HEAD)
        sockets.append(sock)
    latencies = [timed_get(srv) for _ in range(10)]
    assert max(latencies) < 1.0, latencies
    # The first of them is still held open by the master (none was evicted or refused).
    sockets[0].setblocking(False)
    with pytest.raises(BlockingIOError):
        sockets[0].recv(1)


def test_past_max_connections_the_oldest_half_sent_head_makes_room_with_408(
        make_server: Callable[..., GunicornServer], sockets: list[socket.socket]) -> None:
    srv = make_server(workers=2, env={"FDPASS_MAX_CONNECTIONS": "100"})
    srv.wait_for_log(r"the master holds at most 100 connections")
    for _ in range(150):
        sock = connect(srv)
        sock.sendall(HALF_HEAD)
        sockets.append(sock)
    assert timed_get(srv) < 1.0  # accepting did not pause
    sockets[0].settimeout(5)
    assert read_until_closed(sockets[0]).startswith(b"HTTP/1.1 408 ")  # the oldest went
    sockets[-1].setblocking(False)
    with pytest.raises(BlockingIOError):
        sockets[-1].recv(1)  # the newest is still waiting for its head


def test_the_fd_limit_is_raised_and_said_in_the_log(
        make_server: Callable[..., GunicornServer]) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 1024:
        pytest.skip("the hard open-file limit leaves nothing to raise")
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))  # inherited by the server
    try:
        srv = make_server(workers=1)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    srv.wait_for_log(r"raised the open-file limit \(RLIMIT_NOFILE\) from 1024 to \d+")
    srv.wait_for_log(r"the master holds at most \d+ connections \(from the open-file limit")
