"""The master's intake with issue 13: small bodies wait in the master, bytes that cannot begin
a request and bad PROXY headers are answered at once, and closing is polite (FIN, not RST).
Driven in-process like tests/master/test_dispatcher.py (real sockets, fake clock)."""

from __future__ import annotations

import logging
import os
import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest

from gunicorn_fdpass.http.arrival import Verdict
from gunicorn_fdpass.http.request_rules import AddressAllowList
from gunicorn_fdpass.link import messages as protocol
from gunicorn_fdpass.master import intake
from gunicorn_fdpass.master.linger import LINGER_SECONDS
from tests.master.test_dispatcher import FakeWorker, Rig, assert_full_head, recv_until

HEAD = b"POST /form HTTP/1.1\r\nHost: t\r\n"
GET = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"
V1 = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig(body_buffer=64 * 1024)
    yield r
    r.close()


def handed_bytes(w: FakeWorker, rig: Rig, expect: int) -> bytes:
    """Take the next handoff and read what the client sent on its socket (nothing was
    consumed by the master: the worker sees exactly the client's bytes)."""
    got = recv_until(w, rig)
    assert isinstance(got.message, protocol.Handoff) and got.fd is not None
    assert got.message.prefix == b""
    with socket.socket(fileno=got.fd) as sock:
        sock.settimeout(2)
        data = b""
        while len(data) < expect:
            chunk = sock.recv(65536)
            assert chunk
            data += chunk
    return data


def nothing_handed(w: FakeWorker, rig: Rig) -> None:
    rig.spin()
    assert w.recv() is None


def test_a_small_body_waits_in_the_master_until_complete(rig: Rig) -> None:
    w = rig.worker()
    request = HEAD + b"Content-Length: 10\r\n\r\n" + b"0123456789"
    client = rig.connect(send=request[:-7])
    nothing_handed(w, rig)
    assert rig.dispatcher.counts()["waiting_for_body"] == 1
    client.sendall(request[-7:-1])
    nothing_handed(w, rig)
    client.sendall(request[-1:])
    assert handed_bytes(w, rig, len(request)) == request
    assert rig.dispatcher.counts()["waiting_for_body"] == 0


def test_a_chunked_body_waits_until_its_last_chunk(rig: Rig) -> None:
    w = rig.worker()
    request = HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    client = rig.connect(send=request[:-5])
    nothing_handed(w, rig)
    assert rig.dispatcher.counts()["waiting_for_body"] == 1
    client.sendall(request[-5:])
    assert handed_bytes(w, rig, len(request)) == request


def test_a_body_near_the_bound_fits_in_the_socket_without_being_read(rig: Rig) -> None:
    w = rig.worker()
    body = os.urandom(60 * 1024)
    request = HEAD + b"Content-Length: %d\r\n\r\n" % len(body) + body
    client = rig.connect(send=request[:200])
    nothing_handed(w, rig)
    client.sendall(request[200:-1])
    nothing_handed(w, rig)
    client.sendall(request[-1:])
    assert handed_bytes(w, rig, len(request)) == request


@pytest.mark.parametrize("head", [
    HEAD + b"Content-Length: 10\r\nExpect: 100-continue\r\n\r\n",  # the app decides
    HEAD + b"Content-Length: 70000\r\n\r\n",  # over FDPASS_BODY_BUFFER: as before
])
def test_heads_that_go_to_a_worker_before_their_body(rig: Rig, head: bytes) -> None:
    w = rig.worker()
    rig.connect(send=head)
    assert handed_bytes(w, rig, len(head)) == head


def test_body_buffering_off_hands_over_with_the_head() -> None:
    rig = Rig()  # body_buffer 0
    try:
        w = rig.worker()
        head = HEAD + b"Content-Length: 10\r\n\r\n"
        rig.connect(send=head)
        assert handed_bytes(w, rig, len(head)) == head
    finally:
        rig.close()


def test_a_body_that_stalls_gets_408_after_the_body_timeout() -> None:
    rig = Rig(body_buffer=1024, body_timeout=2.0, head_timeout=5.0)
    try:
        w = rig.worker()
        client = rig.connect(send=HEAD + b"Content-Length: 10\r\n\r\nabc")
        rig.spin()
        rig.advance(1.9)
        assert rig.dispatcher.counts()["waiting_for_body"] == 1
        rig.advance(0.2)
        client.settimeout(2)
        answer = client.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert_full_head(answer)
        assert client.recv(1) == b""
        assert rig.dispatcher.stats["timed_out"] == 1
        assert w.recv() is None
    finally:
        rig.close()


def test_a_client_shutting_its_side_mid_body_goes_to_the_worker(rig: Rig) -> None:
    """As before bodies waited in the master: the worker reads what came and answers."""
    w = rig.worker()
    partial = HEAD + b"Content-Length: 10\r\n\r\nabc"
    client = rig.connect(send=partial)
    nothing_handed(w, rig)
    client.shutdown(socket.SHUT_WR)
    assert handed_bytes(w, rig, len(partial)) == partial


@pytest.mark.parametrize("junk", [b"\x00\x01\x02\x03", b"GE(T / HTTP/1.1\r\n", b"\r\n\r\n",
                                  b"GET\t/ HTTP/1.1\r\n"])
def test_bytes_that_cannot_begin_a_request_get_400_at_once(
        rig: Rig, junk: bytes, caplog: pytest.LogCaptureFixture) -> None:
    w = rig.worker()
    client = rig.connect(send=junk)
    rig.spin()
    client.settimeout(2)
    answer = client.recv(4096)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert_full_head(answer)
    assert client.recv(1) == b""  # FIN after the answer
    assert w.recv() is None
    assert rig.dispatcher.stats["rejected"] == 1
    assert any("Invalid request from" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("junk", [b"\x00\x01\x02\x03", b"GE(T / HTTP/1.1\r\n", b"\r\n\r\n",
                                  b"GET\t/ HTTP/1.1\r\n", bytes.fromhex("160301020001")])
def test_bytes_that_cannot_begin_a_request_get_400_at_once_when_sent_after_the_accept(
        rig: Rig, junk: bytes) -> None:
    # The connection is watched first (nothing sent yet); then the fast path's peek must not
    # take the junk for a head in progress: it goes to classify(), which refuses it.
    w = rig.worker()
    client = rig.connect(send=b"")
    rig.spin()
    assert rig.dispatcher.counts()["waiting_for_head"] == 1
    client.sendall(junk)
    rig.spin()
    client.settimeout(2)
    assert client.recv(4096).startswith(b"HTTP/1.1 400 ")
    assert w.recv() is None
    assert rig.dispatcher.stats["rejected"] == 1


def test_only_what_is_not_a_plain_head_is_asked_of_classify(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[bytes] = []
    real = intake.classify

    def counting(data: bytes | bytearray, length: int, *args: Any) -> Verdict:
        asked.append(bytes(data[:length]))
        return real(data, length, *args)

    monkeypatch.setattr(intake, "classify", counting)
    w = rig.worker(capacity=4)
    rig.connect(send=GET)  # plain: accept, the fast verdict, the queue
    late = rig.connect(send=b"")  # plain too, once it has all come
    rig.spin()
    late.sendall(GET)
    for _ in range(2):
        assert handed_bytes(w, rig, len(GET)) == GET
    assert asked == []
    request = HEAD + b"Content-Length: 3\r\n\r\nabc"
    rig.connect(send=request)  # a body: classify() decides
    assert handed_bytes(w, rig, len(request)) == request
    assert asked == [request]


def test_tls_client_hello_on_a_plain_port_gets_400_and_one_warning(
        rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    hello = bytes.fromhex("160301020001") + os.urandom(300)
    caplog.set_level(logging.WARNING)
    for _ in range(2):
        client = rig.connect(send=hello)
        rig.spin()
        client.settimeout(2)
        assert client.recv(4096).startswith(b"HTTP/1.1 400 ")
        assert client.recv(1) == b""
    warnings = [r.getMessage() for r in caplog.records if "TLS handshake" in r.getMessage()]
    assert len(warnings) == 1  # not one per client: a scanner must not flood the log
    assert "plain-HTTP port" in warnings[0]
    assert rig.dispatcher.stats["rejected"] == 2


def _proxy_rig(allow: list[str]) -> Rig:
    return Rig(body_buffer=1024, proxy_protocol="auto", proxy_allow=AddressAllowList(allow))


@pytest.mark.parametrize(("header", "allow", "status"), [
    (b"PROXY TCP4 192.168.0.1 192.16...\r\n", ["127.0.0.1"], 400),  # Gunicorn's pp_01
    (b"PROXY TCP4 192.168.0.1 192.168.0.11 65iii 100000\r\n", ["127.0.0.1"], 400),  # pp_02
    (b"\r\n\r\n\x00\r\nQUIT\n\x23\x11\x00\x0c" + bytes(12), ["127.0.0.1"], 400),  # v2 command
    (V1, ["10.0.0.0/8"], 403),  # a peer not in proxy_allow_ips
])
def test_bad_or_forbidden_proxy_headers_are_answered_at_once(
        header: bytes, allow: list[str], status: int) -> None:
    rig = _proxy_rig(allow)
    try:
        w = rig.worker()
        client = rig.connect(send=header)
        rig.spin()
        client.settimeout(2)
        assert client.recv(4096).startswith(b"HTTP/1.1 %d " % status)
        assert client.recv(1) == b""
        assert w.recv() is None
    finally:
        rig.close()


def test_a_valid_proxy_header_then_pipelined_requests_is_handed_over_intact() -> None:
    rig = _proxy_rig(["127.0.0.1"])
    try:
        w = rig.worker()
        request = V1 + HEAD + b"Content-Length: 3\r\n\r\nabc" + GET
        client = rig.connect(send=V1)
        nothing_handed(w, rig)  # the header alone: a request has not begun
        client.sendall(request[len(V1):len(V1) + 10])
        nothing_handed(w, rig)
        client.sendall(request[len(V1) + 10:])
        assert handed_bytes(w, rig, len(request)) == request
    finally:
        rig.close()


def test_half_close_after_a_partial_head_ends_with_fin_not_reset(rig: Rig) -> None:
    client = rig.connect(send=b"GET / HTTP/1.1\r\nHost: t\r\n")
    rig.spin()
    client.shutdown(socket.SHUT_WR)
    rig.spin()
    client.settimeout(2)
    assert client.recv(4096) == b""  # not ConnectionResetError
    assert rig.dispatcher.counts()["waiting_for_head"] == 0


def test_an_answered_client_still_sending_lingers_then_is_closed(rig: Rig) -> None:
    """After a 400 the master reads and drops what still comes, so its close is a FIN; it
    lets go after LINGER_SECONDS."""
    client = rig.connect(send=b"\x00junk")
    rig.spin()
    client.settimeout(2)
    assert client.recv(4096).startswith(b"HTTP/1.1 400 ")
    assert client.recv(1) == b""  # our side is shut: FIN right after the answer
    assert rig.dispatcher.counts()["lingering"] == 1
    client.sendall(b"x" * 10000)  # the client goes on sending
    rig.spin()
    assert rig.dispatcher.counts()["lingering"] == 1
    rig.advance(LINGER_SECONDS)
    assert rig.dispatcher.counts()["lingering"] == 0
    # Everything it sent was read before the close, so no reset reached it:
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 0, 0))
    assert client.recv(1) == b""


def test_a_lingering_client_that_closes_is_let_go_at_once(rig: Rig) -> None:
    client = rig.connect(send=b"\x00junk")
    rig.spin()
    client.settimeout(2)
    assert client.recv(4096).startswith(b"HTTP/1.1 400 ")
    client.close()
    rig.spin()
    assert rig.dispatcher.counts()["lingering"] == 0
