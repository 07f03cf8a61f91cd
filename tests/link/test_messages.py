"""The master<->worker codec, without sockets."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gunicorn_fdpass.errors import ProtocolError
from gunicorn_fdpass.link import messages as protocol

ids = st.integers(min_value=0, max_value=2**64 - 1)
payloads = st.binary(max_size=protocol.MAX_PAYLOAD)
messages = st.one_of(
    st.builds(protocol.Hello, st.integers(1, 2**32 - 1), st.integers(0, 2**32)),
    st.builds(protocol.Handoff, ids, payloads, st.integers(0, 2**32 - 1)),
    st.builds(protocol.Refused, ids),
    st.builds(protocol.Done, ids),
    st.builds(protocol.Done, ids, st.lists(ids, max_size=20).map(tuple)),
    st.builds(protocol.Park, ids, payloads, st.integers(0, 2**32 - 1)),
    st.just(protocol.Draining()),
    st.just(protocol.Closing()),
)


@given(messages)
def test_every_message_round_trips(message: protocol.Message) -> None:
    assert protocol.decode(protocol.encode(message)) == message


def test_only_handoff_carries_an_fd() -> None:
    # Park carries none: the master keeps its copy of a handed-out connection's fd.
    assert protocol.carries_fd(protocol.Handoff(1))
    for message in (protocol.Hello(1, 2), protocol.Park(1), protocol.Refused(1),
                    protocol.Done(1), protocol.Draining(), protocol.Closing()):
        assert not protocol.carries_fd(message)


def test_wire_format_is_fixed_header_then_payload() -> None:
    data = protocol.encode(protocol.Handoff(0x0102, b"GET /"))
    assert data[:protocol.HEADER_SIZE] == struct.pack("!BIQ", protocol.Kind.HANDOFF, 0, 0x0102)
    assert data[protocol.HEADER_SIZE:] == b"GET /"


@pytest.mark.parametrize("datagram", [
    b"",
    b"\x01\x00",
    struct.pack("!BIQ", 99, 0, 1),
    struct.pack("!BIQ", protocol.Kind.HELLO, 0, 1),
    struct.pack("!BIQ", protocol.Kind.DONE, 0, 1) + b"extra",
    struct.pack("!BIQ", 3, 0, 1),  # TAKEN, retired
    struct.pack("!BIQ", protocol.Kind.HANDOFF, 0, 1) + b"x" * (protocol.MAX_PAYLOAD + 1),
])
def test_malformed_datagrams_are_refused(datagram: bytes) -> None:
    with pytest.raises(ProtocolError):
        protocol.decode(datagram)


@pytest.mark.parametrize("message", [
    protocol.Hello(0, 1),
    protocol.Handoff(-1),
    protocol.Done(2**64),
    protocol.Done(1, (2, 2**64)),
    protocol.Done(1, tuple(range(protocol.MAX_DONE))),  # one id too many for a datagram
    protocol.Park(1, b"x" * (protocol.MAX_PAYLOAD + 1)),
])
def test_unencodable_messages_are_refused(message: protocol.Message) -> None:
    with pytest.raises(ProtocolError):
        protocol.encode(message)


def test_done_with_more_ids_puts_them_in_its_payload() -> None:
    """A worker that ended several connections in one turn says so in one message."""
    message = protocol.Done(1, tuple(range(2, protocol.MAX_DONE + 1)))
    data = protocol.encode(message)
    assert len(data) == protocol.MAX_MESSAGE
    assert data[protocol.HEADER_SIZE:protocol.HEADER_SIZE + 8] == (2).to_bytes(8, "big")
    assert protocol.decode(data) == message
