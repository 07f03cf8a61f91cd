"""The master's fast path: the C core and its pure-Python twin give the same results."""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator
from types import ModuleType

import pytest

from gunicorn_fdpass.link import messages
from gunicorn_fdpass.link.channel import Channel
from gunicorn_fdpass.master import fastpath

try:
    from gunicorn_fdpass.master import _core  # type: ignore[attr-defined]
except ImportError:  # no compiler where the package was installed
    _core = None

IMPLS = [pytest.param(fastpath, id="pure"),
         pytest.param(_core, id="compiled",
                      marks=pytest.mark.skipif(_core is None, reason="C core not built"))]
MAX_PEEK = 1024


@pytest.fixture(params=IMPLS)
def core(request: pytest.FixtureRequest) -> ModuleType:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    yield sock
    sock.close()


def _verdict_of(core: ModuleType, data: bytes) -> int:
    a, b = socket.socketpair()
    with a, b:
        if data:
            a.sendall(data)
        return int(core.peek(b.fileno(), bytearray(MAX_PEEK + 1), MAX_PEEK))


@pytest.mark.parametrize(("data", "verdict"), [
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", fastpath.PLAIN),
    (b"GET / HTTP/1.1\nHost: x\n\n", fastpath.PLAIN),  # bare LF: the parser decides later
    (b"GET / HTTP/1.1\r\nHost: x\r\n", fastpath.STARTED),
    (b"", fastpath.WAIT),
    (b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", fastpath.OTHER),
    (b"POST / HTTP/1.1\r\ntransfer-ENCODING: chunked\r\n\r\n", fastpath.OTHER),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nGET / HTTP/1.1\r\n\r\n", fastpath.OTHER),
    (b"\r\n\r\n\x00\r\nQUIT\n", fastpath.OTHER),  # PROXY v2 signature
    (b"GET / HTTP/1.1\r\nX: " + b"a" * MAX_PEEK + b"\r\n\r\n", fastpath.OTHER),  # too long
    (b"GET / HTTP/1.1\r\nX-Content-Length: 1\r\n\r\n", fastpath.PLAIN),
    (b"POST / HTTP/1.1\r\nContent-Length : 3\r\n\r\nabc", fastpath.OTHER),  # arrival's spelling
    # What cannot begin a request goes to http.arrival (refused at once), even unfinished:
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", fastpath.OTHER),  # TLS ClientHello
    (b"\x16\x03\x01\n\n", fastpath.OTHER),
    (b"G\x00T / HTTP/1.1\r\n\r\n", fastpath.OTHER),  # a control byte in the method
    (b"GET\t/ HTTP/1.1\r\n\r\n", fastpath.OTHER),  # no space after the method
    (b"\r\nGET / HTTP/1.1\r\n\r\n", fastpath.OTHER),  # an empty line first
    (b"PROXY TCP4 1.2.3.4", fastpath.OTHER),  # a PROXY line, unfinished
    (b"GE", fastpath.STARTED),  # a method so far
    (b"PROX", fastpath.STARTED),
    (b"GET /index", fastpath.STARTED),
])
def test_peek_verdicts(core: ModuleType, data: bytes, verdict: int) -> None:
    assert _verdict_of(core, data) == verdict


def test_peek_at_a_closed_client_is_gone(core: ModuleType) -> None:
    a, b = socket.socketpair()
    a.close()
    with b:
        assert core.peek(b.fileno(), bytearray(MAX_PEEK + 1), MAX_PEEK) == fastpath.GONE


def test_peek_rejects_a_short_buffer(core: ModuleType) -> None:
    a, b = socket.socketpair()
    with a, b, pytest.raises(ValueError):
        core.peek(b.fileno(), bytearray(10), MAX_PEEK)


def test_peek_consumes_nothing(core: ModuleType) -> None:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(b"GET / HTTP/1.1\r\n\r\n")
        core.peek(b.fileno(), bytearray(MAX_PEEK + 1), MAX_PEEK)
        assert b.recv(100) == b"GET / HTTP/1.1\r\n\r\n"


def test_accept_batch_accepts_and_peeks(core: ModuleType, listener: socket.socket) -> None:
    clients = [socket.create_connection(listener.getsockname()) for _ in range(3)]
    clients[0].sendall(b"GET / HTTP/1.1\r\n\r\n")
    clients[1].sendall(b"GET / HT")
    try:
        got, err = core.accept_batch(listener.fileno(), 64, bytearray(MAX_PEEK + 1), MAX_PEEK)
        assert err == 0
        assert [v for _, v in got] == [fastpath.PLAIN, fastpath.STARTED, fastpath.WAIT]
        for fd, _ in got:
            assert os.get_inheritable(fd) is False  # close-on-exec
            os.close(fd)
        assert core.accept_batch(listener.fileno(), 64, bytearray(MAX_PEEK + 1),
                                 MAX_PEEK) == ([], 0)
    finally:
        for c in clients:
            c.close()


def test_accept_batch_stops_at_its_limit(core: ModuleType, listener: socket.socket) -> None:
    clients = [socket.create_connection(listener.getsockname()) for _ in range(3)]
    try:
        got, err = core.accept_batch(listener.fileno(), 2, bytearray(MAX_PEEK + 1), MAX_PEEK)
        assert (len(got), err) == (2, 0)
        rest, _ = core.accept_batch(listener.fileno(), 2, bytearray(MAX_PEEK + 1), MAX_PEEK)
        assert len(rest) == 1
        for fd, _ in got + rest:
            os.close(fd)
    finally:
        for c in clients:
            c.close()


def test_accept_batch_reports_errors(core: ModuleType) -> None:
    a, b = socket.socketpair()  # not a listener: accept fails with EINVAL
    with a, b:
        got, err = core.accept_batch(a.fileno(), 4, bytearray(MAX_PEEK + 1), MAX_PEEK)
        assert (got, err) == ([], errno.EINVAL)


def test_send_handoff_is_a_handoff_message_with_the_fd(core: ModuleType) -> None:
    master, worker = Channel.pair()
    a, b = socket.socketpair()
    with a, b:
        assert core.send_handoff(master.fileno(), 2**40 + 7, socket.AF_INET, b"GET",
                                 b.fileno()) is True
        received = worker.recv()
        assert received is not None and received.fd is not None
        assert received.message == messages.Handoff(2**40 + 7, b"GET", socket.AF_INET)
        with socket.socket(fileno=received.fd) as copy:
            copy.sendall(b"x")
            assert a.recv(1) == b"x"
    master.close()
    worker.close()


def test_send_handoff_says_false_when_the_inbox_is_full(core: ModuleType) -> None:
    master, worker = Channel.pair()
    a, b = socket.socketpair()
    with a, b:
        sent = 0
        while core.send_handoff(master.fileno(), 1, 0, b"x" * 60000, b.fileno()):
            sent += 1
        assert sent > 0
    master.close()
    worker.close()


def test_send_handoff_raises_when_the_worker_is_gone(core: ModuleType) -> None:
    master, worker = Channel.pair()
    worker.close()
    a, b = socket.socketpair()
    with a, b, pytest.raises(OSError) as info:
        core.send_handoff(master.fileno(), 1, 0, b"", b.fileno())
    assert info.value.errno == errno.EPIPE
    master.close()


def test_recv_batch_reads_several_messages_and_their_fds(core: ModuleType) -> None:
    master, worker = Channel.pair()
    a, b = socket.socketpair()
    with a, b:
        worker.send(messages.Done(1))
        worker.send(messages.Handoff(2, b"left", socket.AF_UNIX), b.fileno())
        worker.send(messages.Draining())
        got, status = core.recv_batch(master.fileno())
        assert status == fastpath.RECV_OK
        assert [messages.decode(d) for d, _, _ in got] == [
            messages.Done(1), messages.Handoff(2, b"left", socket.AF_UNIX), messages.Draining()]
        assert [fd >= 0 for _, fd, _ in got] == [False, True, False]
        os.close(got[1][1])
        assert core.recv_batch(master.fileno()) == ([], fastpath.RECV_OK)
    master.close()
    worker.close()


def test_recv_batch_reads_at_most_a_batch(core: ModuleType) -> None:
    master, worker = Channel.pair()
    for i in range(fastpath.RECV_BATCH + 3):
        worker.send(messages.Done(i))
    got, _ = core.recv_batch(master.fileno())
    rest, _ = core.recv_batch(master.fileno())
    assert (len(got), len(rest)) == (fastpath.RECV_BATCH, 3)
    master.close()
    worker.close()


def test_recv_batch_sees_the_peer_hang_up_after_its_last_messages(core: ModuleType) -> None:
    master, worker = Channel.pair()
    worker.send(messages.Done(5))
    worker.close()
    got, status = core.recv_batch(master.fileno())
    assert [messages.decode(d) for d, _, _ in got] == [messages.Done(5)]
    assert status == fastpath.RECV_GONE
    master.close()


def test_recv_batch_closes_extra_fds(core: ModuleType) -> None:
    raw_master, raw_worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    r, w = os.pipe()
    header = struct.pack("!BIQ", messages.Kind.PARK, 0, 1)
    raw_worker.sendmsg([header], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                   struct.pack("ii", r, w))])
    os.close(r)
    os.close(w)
    got, _ = core.recv_batch(raw_master.fileno())
    assert len(got) == 1 and got[0][1] >= 0
    os.close(got[0][1])
    with pytest.raises(OSError):  # the pipe's write end was closed: no fd leaked
        os.write(w, b"x")
    raw_master.close()
    raw_worker.close()


def test_recv_batch_reports_an_oversized_datagram(core: ModuleType) -> None:
    raw_master, raw_worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    raw_worker.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    raw_worker.send(b"\x05" * (messages.MAX_MESSAGE + 1))
    assert core.recv_batch(raw_master.fileno()) == ([], fastpath.RECV_TOO_LONG)
    raw_master.close()
    raw_worker.close()


def test_the_environment_variable_selects_pure_python() -> None:
    import subprocess
    import sys

    code = "from gunicorn_fdpass.master import fastpath; print(fastpath.COMPILED)"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ,
                         "FDPASS_NO_EXTENSIONS": "1"}, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"
