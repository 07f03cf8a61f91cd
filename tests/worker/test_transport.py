"""Unit tests of gunicorn_fdpass.worker.transport: reads and sends with MSG_DONTWAIT on a
socket Python keeps blocking, waiting in poll() only when a call would block."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from gunicorn_fdpass.worker.transport import ClientGone, Transport

pytestmark = pytest.mark.timeout(10)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def _transport(sock: socket.socket, timeout: float | None = 2.0) -> Transport:
    transport = Transport(sock)
    transport.set_timeout(timeout)
    return transport


def test_a_plain_socket_keeps_no_python_timeout(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    server, _ = pair
    _transport(server, 0.5)
    # No ioctl to set a timeout, no poll() before every call: Python sees a blocking socket.
    assert server.gettimeout() is None


def test_a_default_socket_timeout_is_taken_off(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    server, _ = pair
    server.settimeout(3.0)  # as socket.setdefaulttimeout() would have made it
    transport = _transport(server, 0.5)
    assert server.gettimeout() is None
    assert transport.timeout == 0.5


def test_recv_returns_what_arrived(pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = pair
    client.sendall(b"hello")
    assert _transport(server).recv(100) == b"hello"


def test_recv_waits_for_data(pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = pair
    timer = threading.Timer(0.05, client.sendall, args=(b"late",))
    timer.start()
    try:
        assert _transport(server).recv(100) == b"late"
    finally:
        timer.join()


def test_recv_times_out(pair: tuple[socket.socket, socket.socket]) -> None:
    server, _ = pair
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        _transport(server, 0.05).recv(100)
    assert 0.04 <= time.monotonic() - started < 2


def test_recv_now_never_waits(pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = pair
    transport = _transport(server, None)  # a wait would never end
    assert transport.recv_now(100) is None
    client.sendall(b"x")
    assert transport.recv_now(100) == b"x"
    client.shutdown(socket.SHUT_WR)
    assert transport.recv_now(100) == b""


def test_sendall_waits_for_room_and_sends_everything(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    server, client = pair
    payload = bytes(range(256)) * 40_000  # ~10 MB: far more than the socket buffers hold
    received = bytearray()

    def read() -> None:
        while len(received) < len(payload):
            received.extend(client.recv(1 << 20))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    _transport(server).sendall(payload)
    reader.join(5)
    assert bytes(received) == payload


def test_sendall_times_out_when_the_client_reads_nothing(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    server, _ = pair
    transport = _transport(server, 0.05)
    with pytest.raises(ClientGone):
        transport.sendall(b"x" * 10_000_000)
    assert transport.dead
    with pytest.raises(ClientGone):
        transport.sendall(b"more")  # dead for good


def test_finish_without_linger_drops_what_arrived_and_returns_at_once(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    server, client = pair
    client.sendall(b"unread request bytes")
    transport = _transport(server, None)
    started = time.monotonic()
    transport.finish(client_done=False)
    assert time.monotonic() - started < 1
    assert client.recv(10) == b""  # our side was shut down: the client sees EOF
    assert transport.recv_now(100) is None  # nothing left unread to reset the close


def test_finish_lingers_until_the_client_stops_sending(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    server, client = pair
    transport = _transport(server, None)

    def send_then_close() -> None:
        client.sendall(b"late body bytes")
        client.shutdown(socket.SHUT_WR)

    sender = threading.Timer(0.05, send_then_close)  # most likely once finish() waits
    sender.start()
    started = time.monotonic()
    transport.finish(client_done=False, linger=5.0)
    sender.join()
    assert time.monotonic() - started < 4  # returned at the client's EOF, not the deadline


@pytest.fixture
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    yield server, client
    server.close()
    client.close()


def test_send_last_sends_everything_then_the_end_of_our_side(
    tcp_pair: tuple[socket.socket, socket.socket],
) -> None:
    # MSG_MORE holds the last segment for the shutdown() that follows at once, so that the
    # FIN goes out with the data: the client gets all of it, then EOF, before finish().
    server, client = tcp_pair
    client.sendall(b"unread request bytes")
    transport = _transport(server)
    transport.send_last(b"response")
    client.settimeout(2)
    received = bytearray()
    while chunk := client.recv(100):
        received += chunk
    assert bytes(received) == b"response"
    transport.finish(client_done=False)  # still drops what the client sent
    assert transport.recv_now(100) is None


def test_send_last_on_a_failed_connection_raises(
    tcp_pair: tuple[socket.socket, socket.socket],
) -> None:
    server, _ = tcp_pair
    transport = _transport(server)
    transport.abort()
    with pytest.raises(ClientGone):
        transport.send_last(b"response")
