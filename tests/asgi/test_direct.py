"""The direct transport alone: a socketpair, a recording protocol, a recording loop
transport to hand over to."""

from __future__ import annotations

import asyncio
import gc
import socket
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from gunicorn_fdpass.asgi.direct import DirectTransport, send_last


class Recorder(asyncio.Protocol):
    """What the transport tells its protocol."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    def pause_writing(self) -> None:
        self.events.append("pause")

    def resume_writing(self) -> None:
        self.events.append("resume")

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append(("lost", exc))


class LoopTransport(asyncio.Transport):
    """Stands for the event loop's transport: records the calls handed over to it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[Any] = []

    def write(self, data: Any) -> None:
        self.calls.append(("write", bytes(data)))

    def write_eof(self) -> None:
        self.calls.append("write_eof")

    def close(self) -> None:
        self.calls.append("close")

    def abort(self) -> None:
        self.calls.append("abort")


class Rig:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.server, self.client = socket.socketpair()
        self.client.settimeout(5)
        self.protocol = Recorder()
        self.blocked = 0
        self.transport = DirectTransport(self.server, self.protocol, loop, self._blocked)

    def _blocked(self) -> None:
        self.blocked += 1

    def fill(self) -> bytes:
        """Data the socket cannot take at once (the client reads nothing yet)."""
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        return bytes(range(256)) * 4096  # 1 MiB

    def settle(self) -> None:
        """Let callbacks the transport scheduled run."""
        self.loop.run_until_complete(asyncio.sleep(0))

    def read_all(self, size: int) -> bytes:
        data = bytearray()
        while len(data) < size:
            chunk = self.client.recv(size - len(data))
            assert chunk
            data += chunk
        return bytes(data)


@pytest.fixture
def rig() -> Iterator[Rig]:
    loop = asyncio.new_event_loop()
    r = Rig(loop)
    yield r
    r.client.close()
    r.server.close()
    loop.close()


def test_writes_go_straight_to_the_socket_and_close_ends_it_once(rig: Rig) -> None:
    t = rig.transport
    t.write(b"hello ")
    t.write(b"world")
    assert t.get_write_buffer_size() == 0 and rig.blocked == 0
    assert rig.client.recv(100) == b"hello world"
    t.write_eof()
    assert rig.client.recv(100) == b""  # our FIN
    t.close()
    t.close()
    assert t.is_closing() and rig.server.fileno() == -1
    assert rig.protocol.events == []  # connection_lost comes soon, as from asyncio
    rig.settle()
    assert rig.protocol.events == [("lost", None)]
    assert not t.begin_move()  # nothing left to move


def test_a_write_the_socket_cannot_take_asks_for_the_loop_and_keeps_the_rest(
        rig: Rig) -> None:
    t = rig.transport
    big = rig.fill()
    t.write(big)
    assert rig.blocked == 1 and rig.protocol.events == ["pause"]
    pending = t.get_write_buffer_size()
    assert 0 < pending < len(big)
    # Until the hand-over, what the connection asks is kept, in order.
    t.write(b"tail")
    t.write_eof()
    t.close()
    assert rig.blocked == 1 and t.get_write_buffer_size() == pending + 4
    assert t.begin_move()
    loop_side = LoopTransport()
    t.hand_over(loop_side)
    assert loop_side.calls == [("write", big[len(big) - pending:] + b"tail"), "write_eof",
                               "close"]
    assert rig.protocol.events == ["pause", "resume"]
    assert rig.read_all(len(big) - pending) == big[:len(big) - pending]
    t.write(b"late")  # after the hand-over this transport does nothing
    assert loop_side.calls[-1] == "close" and rig.server.fileno() >= 0  # the loop's now


def test_abort_while_moving_drops_the_rest_and_aborts_there(rig: Rig) -> None:
    t = rig.transport
    t.write(rig.fill())
    t.abort()
    assert rig.server.fileno() >= 0  # the move is under way: the socket is the loop's
    loop_side = LoopTransport()
    t.hand_over(loop_side)
    assert loop_side.calls == ["abort"]


def test_a_move_that_fails_ends_the_connection(rig: Rig) -> None:
    t = rig.transport
    assert t.begin_move()
    t.write(b"kept")
    error = ConnectionResetError("gone")
    t.move_failed(error)
    assert rig.server.fileno() == -1 and t.get_write_buffer_size() == 0
    rig.settle()
    assert rig.protocol.events == [("lost", error)]


def test_a_write_to_a_client_that_left_ends_the_connection_with_the_error(rig: Rig) -> None:
    rig.client.close()
    t = rig.transport
    t.write(b"x")
    assert t.is_closing()
    rig.settle()
    [(lost, exc)] = rig.protocol.events
    assert lost == "lost" and isinstance(exc, OSError)
    t.write(b"more")  # ignored, as on a closed asyncio transport
    assert rig.protocol.events == [(lost, exc)]


def test_addresses_come_from_the_socket_and_nothing_is_read(rig: Rig) -> None:
    t = rig.transport
    assert t.get_extra_info("socket") is rig.server
    assert t.get_extra_info("sockname") == rig.server.getsockname()
    assert t.get_extra_info("sslcontext") is None and t.get_extra_info("x", 7) == 7
    assert t.can_write_eof() and not t.is_reading()
    t.pause_reading()
    t.resume_reading()
    rig.client.sendall(b"GET / HTTP/1.1\r\n\r\n")
    assert rig.server.recv(100, socket.MSG_PEEK).startswith(b"GET")  # left for the loop


def test_the_ended_transport_lets_go_of_its_protocol(rig: Rig) -> None:
    # The protocol refers to the transport: the transport must not keep a cycle alive.
    ref = weakref.ref(rig.protocol)
    rig.transport.close()
    rig.settle()
    del rig.protocol
    gc.disable()
    try:
        assert ref() is None
    finally:
        gc.enable()


def test_tcp_gets_nodelay_before_a_second_write() -> None:
    """A streamed response's pieces must not wait for the client's delayed ACK (Nagle)."""
    loop = asyncio.new_event_loop()
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    try:
        t = DirectTransport(server, Recorder(), loop, lambda: None)
        t.write(b"one")
        assert server.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
        t.write(b"two")
        assert server.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        for s in (client, server, listener):
            s.close()
        loop.close()


def test_send_last_sends_the_data_then_our_fin(rig: Rig) -> None:
    assert send_last(rig.server, b"bye") == (3, True)
    assert rig.client.recv(10) == b"bye"
    assert rig.client.recv(10) == b""


def test_send_last_of_more_than_the_socket_takes_sends_no_fin(rig: Rig) -> None:
    big = rig.fill()
    sent, fin = send_last(rig.server, big)
    assert 0 < sent < len(big) and not fin  # the caller's transport sends the rest
    rig.client.close()
    assert send_last(rig.server, b"x") == (0, False)  # a failed socket: nothing sent
