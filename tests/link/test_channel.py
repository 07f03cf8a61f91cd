"""The channel over a real SOCK_SEQPACKET socketpair, in one process."""

from __future__ import annotations

import gc
import os
import resource
import socket
from collections.abc import Iterator

import pytest

from gunicorn_fdpass.errors import ChannelClosed, PeerGone, ProtocolError
from gunicorn_fdpass.link import messages as protocol
from gunicorn_fdpass.link.channel import Channel


@pytest.fixture
def pair() -> Iterator[tuple[Channel, Channel]]:
    a, b = Channel.pair()
    a.set_blocking(False)
    yield a, b
    a.close()
    b.close()


def test_message_without_fd(pair: tuple[Channel, Channel]) -> None:
    a, b = pair
    assert b.recv() is None
    assert a.send(protocol.Hello(3, 42))
    received = b.recv()
    assert received is not None
    assert received.message == protocol.Hello(3, 42)
    assert received.fd is None and not received.fd_lost


def test_fd_travels_and_is_close_on_exec(pair: tuple[Channel, Channel]) -> None:
    a, b = pair
    left, right = socket.socketpair()
    with left, right:
        assert a.send(protocol.Handoff(7, b"GET /"), left.fileno())
        received = b.recv()
        assert received is not None and received.fd is not None
        assert received.message == protocol.Handoff(7, b"GET /")
        assert not os.get_inheritable(received.fd)
        with socket.socket(fileno=received.fd) as copy:
            copy.sendall(b"ping")
            assert right.recv(4) == b"ping"


def test_fd_must_match_message_kind(pair: tuple[Channel, Channel]) -> None:
    a, _ = pair
    with pytest.raises(ProtocolError):
        a.send(protocol.Handoff(1))
    with pytest.raises(ProtocolError):
        a.send(protocol.Done(1), 0)
    with pytest.raises(ProtocolError):  # the master kept its copy: a Park brings no fd back
        a.send(protocol.Park(1), 0)


def test_peer_death_is_peer_gone(pair: tuple[Channel, Channel]) -> None:
    a, b = pair
    b.close()
    with pytest.raises(PeerGone):
        a.recv()
    with pytest.raises(PeerGone):
        a.send(protocol.Done(1))


def test_use_after_close_is_channel_closed(pair: tuple[Channel, Channel]) -> None:
    a, _ = pair
    a.close()
    a.close()  # idempotent
    assert a.closed
    with pytest.raises(ChannelClosed):
        a.fileno()
    with pytest.raises(ChannelClosed):
        a.send(protocol.Done(1))


def test_full_buffer_reports_false_instead_of_blocking(pair: tuple[Channel, Channel]) -> None:
    a, _ = pair
    sent = 0
    while a.send(protocol.Handoff(1, b"x" * 60000), 0):
        sent += 1
        assert sent < 10_000
    assert sent > 0


def test_malformed_datagram_is_protocol_error_and_closes_fds() -> None:
    raw_a, raw_b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    b = Channel(raw_b)
    left, right = socket.socketpair()
    with raw_a, left, right:
        raw_a.sendmsg([b"\xff" * 13], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                       left.fileno().to_bytes(4, "little"))])
        # Counted with the collector off: a collection in between could close unrelated
        # sockets that earlier tests left to it.
        gc.collect()
        gc.disable()
        try:
            before = len(os.listdir("/proc/self/fd"))
            with pytest.raises(ProtocolError):
                b.recv()
            assert len(os.listdir("/proc/self/fd")) == before
        finally:
            gc.enable()
    b.close()


def test_fd_lost_at_fd_limit_is_reported(pair: tuple[Channel, Channel]) -> None:
    """MSG_CTRUNC: the receiver is at its fd limit, the message arrives without its fd."""
    a, b = pair
    left, right = socket.socketpair()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fillers: list[int] = []
    try:
        assert a.send(protocol.Handoff(5), left.fileno())
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 8, hard))
        try:
            while True:
                fillers.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
        received = b.recv()
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        left.close()
        right.close()
    assert received is not None
    assert received.message == protocol.Handoff(5)
    assert received.fd is None and received.fd_lost
