"""The dispatcher driven in-process: real sockets, a fake worker on the other channel end,
a fake clock (time moves only when a test says so), and epoll waits of 0."""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest

from gunicorn_fdpass.link import messages as protocol
from gunicorn_fdpass.link.channel import Channel, Received
from gunicorn_fdpass.master.dispatcher import Dispatcher, DispatchSettings
from gunicorn_fdpass.master.handoff import MAX_REFUSALS, RESERVE_PATIENCE
from gunicorn_fdpass.master.intake import MAX_PEEK

log = logging.getLogger("test-dispatcher")


GET = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"


def assert_full_head(answer: bytes) -> None:
    """The master's own answers carry Date and Server like every other response."""
    head = answer.split(b"\r\n\r\n", 1)[0]
    assert b"\r\nServer: test-server\r\n" in head
    assert b"\r\nDate: " in head and b"\r\nConnection: close" in head


class FakeClock:
    """Monotonic seconds that move only when :meth:`advance` says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Rig:
    def __init__(self, keepalive: float = 5.0, max_queue: int = 100, **settings: Any) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = self.listener.getsockname()[1]
        values: dict[str, Any] = {"keepalive": keepalive, "max_queue": max_queue,
                                  "head_timeout": 5.0, "max_connections": 1000,
                                  "server_software": "test-server"}
        values.update(settings)
        self.clock = FakeClock()
        self.dispatcher = Dispatcher(log, DispatchSettings(**values), clock=self.clock)
        self.dispatcher.set_listeners([self.listener])
        self.clients: list[socket.socket] = []
        self.workers: list[FakeWorker] = []
        self.pids = 4242

    def worker(self, capacity: int = 1) -> FakeWorker:
        """A worker's ends as the child has them after the simulated fork."""
        ends = self.dispatcher.open_channel()
        # The child's own copies: the master closes its copy of the channel end and keeps its
        # copy of the inbox end.
        worker = FakeWorker(_dup(ends.channel), _dup(ends.inbox))
        self.workers.append(worker)
        self.dispatcher.after_fork_in_parent()
        self.pids += 1
        worker.send(protocol.Hello(capacity, self.pids))
        self.spin()
        return worker

    def connect(self, send: bytes = GET) -> socket.socket:
        client = socket.create_connection(("127.0.0.1", self.port))
        self.clients.append(client)
        if send:
            client.sendall(send)
        return client

    def spin(self, rounds: int = 5) -> None:
        """Run rounds of the loop without waiting; check every connection after each."""
        for _ in range(rounds):
            self.dispatcher.poll(0)
            self.dispatcher.audit()

    def advance(self, seconds: float) -> None:
        """Move the clock on, then let the dispatcher see it."""
        self.clock.advance(seconds)
        self.spin(1)

    def close(self) -> None:
        self.dispatcher.close()
        self.listener.close()
        for c in self.clients:
            c.close()
        for w in self.workers:
            w.close()


class FakeWorker:
    """Plays a worker: receives from its inbox (handoffs) and channel (the rest)."""

    def __init__(self, channel: Channel, inbox: Channel) -> None:
        self.channel = channel
        self.inbox = inbox

    def send(self, message: protocol.Message, fd: int | None = None) -> bool:
        return self.channel.send(message, fd)

    def recv(self) -> Received | None:
        received = self.inbox.recv()
        return received if received is not None else self.channel.recv()

    def close(self) -> None:
        """The worker dies."""
        self.channel.close()
        self.inbox.close()


def _dup(channel: Channel) -> Channel:
    return Channel(socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET, 0,
                                 fileno=os.dup(channel.fileno())))


def consume_request(fd: int) -> None:
    """Read the request off the socket, as a worker does before parking a connection."""
    with socket.socket(fileno=os.dup(fd)) as sock:
        assert sock.recv(65536) == GET


def take_and_park(w: FakeWorker, rig: Rig, leftover: bytes = b"") -> int:
    """Act as a worker: take the next handoff, read its request, park it back. Returns its id."""
    got = recv_until(w, rig)
    assert isinstance(got.message, protocol.Handoff) and got.fd is not None
    conn_id = got.message.conn_id
    consume_request(got.fd)
    os.close(got.fd)  # the master kept its copy: only the message goes back
    w.send(protocol.Park(conn_id, leftover, socket.AF_INET))
    return conn_id


def recv_until(channel: FakeWorker, rig: Rig, timeout: float = 2.0) -> Received:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        received = channel.recv()
        if received is not None:
            return received
        rig.spin(1)
    raise AssertionError("no message from the master")


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig()
    yield r
    r.close()


def test_connection_goes_to_worker_and_master_closes_its_copy_after_done(rig: Rig) -> None:
    w = rig.worker()
    client = rig.connect()
    got = recv_until(w, rig)
    assert isinstance(got.message, protocol.Handoff) and got.fd is not None
    rig.spin()
    assert rig.dispatcher.counts()["busy"] == 1
    with socket.socket(fileno=got.fd) as served:
        assert served.recv(len(GET)) == GET
        served.sendall(b"hello")
        assert client.recv(5) == b"hello"
    # The worker closed its copy without a shutdown; the master still holds one, so the
    # client sees no end of file yet (no acknowledgement travels: the master keeps its copy
    # until Done).
    client.setblocking(False)
    with pytest.raises(BlockingIOError):
        client.recv(1)
    w.send(protocol.Done(got.message.conn_id))
    rig.spin()
    assert rig.dispatcher.counts()["busy"] == 0
    client.settimeout(2)
    assert client.recv(1) == b""  # the master closed its copy


def test_one_done_can_end_several_connections(rig: Rig) -> None:
    """An asyncio worker reports every connection that ended in one turn of its loop in one
    Done: each frees its slot and the master closes each copy."""
    w = rig.worker(capacity=10)
    clients = [rig.connect() for _ in range(3)]
    handed = [recv_until(w, rig) for _ in clients]
    ids = []
    for got in handed:
        assert isinstance(got.message, protocol.Handoff) and got.fd is not None
        consume_request(got.fd)
        os.close(got.fd)
        ids.append(got.message.conn_id)
    rig.spin()
    assert rig.dispatcher.counts()["busy"] == 3
    w.send(protocol.Done(ids[0], tuple(ids[1:])))
    rig.spin()
    assert rig.dispatcher.counts()["busy"] == 0
    for client in clients:
        client.settimeout(2)
        assert client.recv(1) == b""  # the master closed its copy


def test_a_done_with_a_torn_id_list_drops_the_worker(rig: Rig) -> None:
    w = rig.worker(capacity=10)
    rig.connect()
    got = recv_until(w, rig)
    assert isinstance(got.message, protocol.Handoff) and got.fd is not None
    header = struct.pack("!BIQ", protocol.Kind.DONE, 0, got.message.conn_id)
    os.write(w.channel.fileno(), header + b"\x00" * 5)
    rig.spin()
    assert rig.dispatcher.counts()["workers"] == 0


def _serve(w: FakeWorker, got: Received) -> None:
    """Act as a worker serving a handoff to the end."""
    assert isinstance(got.message, protocol.Handoff) and got.fd is not None
    socket.socket(fileno=got.fd).close()
    w.send(protocol.Done(got.message.conn_id))


def test_full_worker_gets_one_reserve_then_the_master_queues(rig: Rig) -> None:
    w = rig.worker(capacity=1)
    for _ in range(3):
        rig.connect()
    rig.spin()
    first = w.inbox.recv()
    reserve = w.inbox.recv()  # beyond its one slot: it waits unread in the inbox
    assert first is not None and reserve is not None
    assert w.recv() is None  # the third waits in the master's queue
    assert rig.dispatcher.counts()["queued"] == 1
    _serve(w, first)
    third = recv_until(w, rig)
    ids = {m.message.conn_id for m in (first, reserve, third)}  # type: ignore[union-attr]
    assert len(ids) == 3
    _serve(w, reserve)
    _serve(w, third)


def test_threaded_worker_gets_no_reserve(rig: Rig) -> None:
    w = rig.worker(capacity=2)
    for _ in range(3):
        rig.connect()
    rig.spin()
    got = [recv_until(w, rig) for _ in range(2)]
    assert w.recv() is None
    assert rig.dispatcher.counts()["queued"] == 1
    for g in got:
        _serve(w, g)


def test_unread_reserve_moves_to_a_worker_that_becomes_free(rig: Rig) -> None:
    a = rig.worker(capacity=1)
    b = rig.worker(capacity=1)
    clients = [rig.connect() for _ in range(3)]
    rig.spin()
    on_a, on_b = recv_until(a, rig), recv_until(b, rig)
    # Every slot is busy: the third is somebody's reserve. Find whose, leave it unread.
    # Slots in use and reserves are counted apart: 2 workers x 1 slot, plus one reserve.
    assert sorted(rig.dispatcher.busy_by_worker().values()) == [1, 1]
    assert sorted(rig.dispatcher.reserves_by_worker().values()) == [0, 1]
    counts = rig.dispatcher.counts()
    assert (counts["busy"], counts["reserves"]) == (2, 1)
    holder, other, other_got = (a, b, on_b) if len(a_unread := _peek_inbox(a)) else (b, a, on_a)
    assert a_unread or _peek_inbox(b)
    _serve(other, other_got)  # the other worker is free first, the queue is empty
    rig.spin()
    moved = recv_until(other, rig)
    assert isinstance(moved.message, protocol.Handoff) and moved.fd is not None
    assert holder.inbox.recv() is None  # taken back: the busy worker never sees it
    with socket.socket(fileno=moved.fd) as served:
        served.sendall(b"moved")
        client = next(c for c in clients if c.getsockname() == served.getpeername())
        assert client.recv(5) == b"moved"
    assert rig.dispatcher.stats["requeued"] == 1


def test_draining_worker_gives_back_its_unread_reserve(rig: Rig) -> None:
    a = rig.worker(capacity=1)
    rig.connect()
    rig.connect()
    rig.spin()
    first = recv_until(a, rig)
    assert _peek_inbox(a)  # the reserve
    a.send(protocol.Draining())
    rig.spin()
    assert a.inbox.recv() is None
    assert rig.dispatcher.counts()["queued"] == 1
    b = rig.worker(capacity=1)
    _serve(b, recv_until(b, rig))
    _serve(a, first)


def _peek_inbox(w: FakeWorker) -> bytes:
    try:
        return w.inbox._live().recv(64, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return b""


def test_least_busy_worker_gets_the_next_connection(rig: Rig) -> None:
    a = rig.worker(capacity=2)
    b = rig.worker(capacity=2)
    rig.connect()
    rig.connect()
    got_a, got_b = recv_until(a, rig), recv_until(b, rig)
    for got in (got_a, got_b):
        assert got.fd is not None
        socket.socket(fileno=got.fd).close()


def test_a_dying_workers_unread_handoffs_go_to_another_worker_and_read_ones_close(
        rig: Rig) -> None:
    a = rig.worker(capacity=1)
    served_client = rig.connect()
    got = recv_until(a, rig)  # read: from now on the worker's to serve
    assert got.fd is not None
    reserve_client = rig.connect()
    rig.spin()
    assert _peek_inbox(a)  # its reserve, unread
    with socket.socket(fileno=got.fd) as served:
        assert served.recv(len(GET)) == GET  # the worker started on it...
    a.close()  # ...and dies
    rig.spin()
    # The one it had read is closed by the master (the worker may have answered part of it).
    served_client.settimeout(2)
    assert served_client.recv(1) == b""
    assert rig.dispatcher.counts()["queued"] == 1  # the unread one is back in the queue
    b = rig.worker(capacity=1)
    again = recv_until(b, rig)
    assert isinstance(again.message, protocol.Handoff) and again.fd is not None
    assert again.message.conn_id != got.message.conn_id  # type: ignore[union-attr]
    with socket.socket(fileno=again.fd) as served:
        served.sendall(b"still here")
        assert reserve_client.recv(10) == b"still here"
    assert rig.dispatcher.stats["requeued"] == 1


def test_refused_handoff_is_retried_then_answered_503(rig: Rig) -> None:
    w = rig.worker(capacity=1)
    client = rig.connect()
    for _ in range(MAX_REFUSALS):
        got = recv_until(w, rig)
        assert got.fd is not None
        socket.socket(fileno=got.fd).close()
        w.send(protocol.Refused(got.message.conn_id))  # type: ignore[union-attr]
        rig.spin()
    client.settimeout(2)
    assert client.recv(100).startswith(b"HTTP/1.1 503 ")


def test_parked_connection_returns_to_a_worker_when_data_arrives(rig: Rig) -> None:
    w = rig.worker(capacity=1)
    client = rig.connect()
    conn_id = take_and_park(w, rig, leftover=b"GET / HT")
    rig.spin()
    assert rig.dispatcher.counts()["parked"] == 1
    assert w.recv() is None  # idle: nothing is dispatched
    client.sendall(b"TP/1.1\r\n\r\n")
    again = recv_until(w, rig)
    assert again.message == protocol.Handoff(conn_id, b"GET / HT", socket.AF_INET)
    assert again.fd is not None
    socket.socket(fileno=again.fd).close()


def test_many_requests_on_one_connection_each_come_back_once_whole(rig: Rig) -> None:
    # Parking re-arms a one-shot epoll entry: each next request must be seen exactly once,
    # whether it came before the park (already readable when re-armed), after it whole, or
    # after it in two parts (then the entry turns edge-triggered until the head is whole).
    w = rig.worker(capacity=1)
    client = rig.connect()
    got = recv_until(w, rig)
    assert isinstance(got.message, protocol.Handoff) and got.fd is not None
    conn_id = got.message.conn_id
    arrivals = ["before the park", "after it", "in two parts", "after it"]
    for arrival in arrivals:
        consume_request(got.fd)
        os.close(got.fd)
        if arrival == "before the park":
            client.sendall(GET)
        w.send(protocol.Park(conn_id, b"", socket.AF_INET))
        rig.spin()
        if arrival == "after it":
            assert w.recv() is None
            client.sendall(GET)
        elif arrival == "in two parts":
            client.sendall(GET[:7])
            rig.spin()
            assert w.recv() is None and rig.dispatcher.counts()["parked"] == 1
            client.sendall(GET[7:])
        got = recv_until(w, rig)
        assert got.message == protocol.Handoff(conn_id, b"", socket.AF_INET)
        assert got.fd is not None
    rig.spin()
    assert w.recv() is None  # no second handoff of any of them
    os.close(got.fd)


def test_parked_connection_closes_when_client_hangs_up(rig: Rig) -> None:
    w = rig.worker(capacity=1)
    client = rig.connect()
    take_and_park(w, rig)
    rig.spin()
    client.close()
    rig.spin()
    assert rig.dispatcher.counts()["parked"] == 0
    assert w.recv() is None


def test_idle_parked_connection_expires_after_keepalive() -> None:
    rig = Rig(keepalive=0.25)
    try:
        w = rig.worker(capacity=1)
        client = rig.connect()
        take_and_park(w, rig)
        rig.spin()
        rig.advance(0.24)
        assert rig.dispatcher.counts()["parked"] == 1  # not yet
        rig.advance(0.02)
        assert rig.dispatcher.counts()["parked"] == 0
        client.settimeout(3)
        assert client.recv(1) == b""
        assert rig.dispatcher.stats["timed_out"] == 0  # an idle one just closes
    finally:
        rig.close()


def test_a_parked_connection_leaving_early_does_not_delay_the_next_ones_timeout() -> None:
    # The alarm was set for the first parked connection; it left (its next request came),
    # so at that moment the loop finds nothing due, and must still close the second one
    # exactly at its own deadline.
    rig = Rig(keepalive=0.25)
    try:
        w = rig.worker(capacity=2)
        first = rig.connect()
        take_and_park(w, rig)  # parked at 0: the alarm is set for 0.25
        rig.spin()
        rig.advance(0.1)
        second = rig.connect()
        take_and_park(w, rig)  # parked at 0.1: due at 0.35
        rig.spin()
        first.sendall(GET)  # the first leaves its timer before the alarm it set rings
        again = recv_until(w, rig)
        assert again.fd is not None
        os.close(again.fd)
        rig.advance(0.16)  # 0.26: past the first's old deadline, nothing due
        assert rig.dispatcher.counts()["parked"] == 1
        second.settimeout(3)
        rig.advance(0.08)  # 0.34: not yet
        assert rig.dispatcher.counts()["parked"] == 1
        rig.advance(0.02)  # 0.36: past the second's own deadline
        assert rig.dispatcher.counts()["parked"] == 0
        assert second.recv(1) == b""
    finally:
        rig.close()


def test_a_shorter_keepalive_from_a_reload_applies_to_parked_connections_at_once() -> None:
    rig = Rig(keepalive=30.0)
    try:
        w = rig.worker(capacity=1)
        client = rig.connect()
        take_and_park(w, rig)
        rig.spin()
        rig.advance(1.0)
        assert rig.dispatcher.counts()["parked"] == 1
        rig.dispatcher.settings = dataclasses.replace(rig.dispatcher.settings, keepalive=0.5)
        rig.spin(1)
        assert rig.dispatcher.counts()["parked"] == 0  # parked 1 s: over the new 0.5 s
        client.settimeout(3)
        assert client.recv(1) == b""
    finally:
        rig.close()


def test_full_queue_stops_accepting() -> None:
    rig = Rig(max_queue=2)
    try:
        for _ in range(5):
            rig.connect()
        rig.spin(10)
        counts = rig.dispatcher.counts()
        assert counts["queued"] == 2
        assert counts["accepted"] == 2
        w = rig.worker(capacity=1)
        got = recv_until(w, rig)
        rig.spin(5)
        # Both queued ones went to the worker (one as its reserve): two more accepted.
        assert rig.dispatcher.counts()["accepted"] == 4
        assert rig.dispatcher.counts()["queued"] == 2
        assert got.fd is not None
        socket.socket(fileno=got.fd).close()
    finally:
        rig.close()


def test_connection_reaches_a_worker_only_once_its_head_is_complete(rig: Rig) -> None:
    w = rig.worker(capacity=1)
    client = rig.connect(send=b"")
    rig.spin()
    assert w.recv() is None  # silent: stays in the master
    client.sendall(b"GET / HTTP/1.1\r\nHost:")
    rig.spin()
    assert w.recv() is None  # half a head: still in the master
    assert rig.dispatcher.counts()["waiting_for_head"] == 1
    client.sendall(b" t\r\n\r\n")
    got = recv_until(w, rig)
    assert isinstance(got.message, protocol.Handoff) and got.fd is not None
    with socket.socket(fileno=got.fd) as served:
        assert served.recv(100) == GET  # peeked, never consumed by the master


def test_silent_connection_is_closed_and_partial_head_gets_408() -> None:
    rig = Rig(head_timeout=0.25)
    try:
        w = rig.worker(capacity=1)
        silent = rig.connect(send=b"")
        partial = rig.connect(send=b"GET / HTTP/1.1\r\n")
        for c in (silent, partial):
            c.settimeout(3)
        rig.spin()
        rig.advance(0.24)
        assert rig.dispatcher.counts()["waiting_for_head"] == 2  # not yet
        rig.advance(0.02)
        assert rig.dispatcher.counts()["waiting_for_head"] == 0
        assert silent.recv(100) == b""
        answer = partial.recv(1000)
        assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
        assert_full_head(answer)
        assert w.recv() is None  # no worker was ever involved
        assert rig.dispatcher.stats["timed_out"] == 2
    finally:
        rig.close()


def test_connection_cap_evicts_the_oldest_incomplete_head_with_408_then_the_oldest_idle() -> None:
    """At max_connections the master makes room instead of pausing accept: first the oldest
    connection whose head is incomplete (408 if it had begun one), then the longest idle
    parked one. (Before issue 13 only idle parked ones could go, and accepting paused.)"""
    rig = Rig(max_connections=3)
    try:
        w = rig.worker(capacity=1)
        first = rig.connect()
        take_and_park(w, rig)
        rig.spin()
        assert rig.dispatcher.counts()["parked"] == 1
        slow = rig.connect(send=b"GET / HTTP/1.1\r\n")  # slot 2: half a head
        rig.spin()
        silent = rig.connect(send=b"")  # slot 3: nothing yet
        rig.spin()
        rig.connect(send=b"")  # over the cap: the slow head makes room, told why
        rig.spin()
        slow.settimeout(2)
        answer = slow.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert_full_head(answer)
        assert slow.recv(1) == b""  # FIN after the answer
        rig.connect(send=b"")  # over the cap again: the silent one (older) goes, no answer
        rig.spin()
        silent.settimeout(2)
        assert silent.recv(1) == b""
        counts = rig.dispatcher.counts()
        assert (counts["evicted"], counts["parked"], counts["waiting_for_head"]) == (2, 1, 2)
        assert counts["timed_out"] == 0  # evicted, not timed out
        first.setblocking(False)
        with pytest.raises(BlockingIOError):  # the idle parked one is still open
            first.recv(1)
    finally:
        rig.close()


def test_connection_cap_evicts_the_oldest_idle_parked_connection_when_no_head_waits() -> None:
    rig = Rig(max_connections=1)
    try:
        w = rig.worker(capacity=1)
        first = rig.connect()
        take_and_park(w, rig)
        rig.spin()
        assert rig.dispatcher.counts()["parked"] == 1
        rig.connect(send=b"")  # over the cap: the idle parked one makes room
        rig.spin()
        first.settimeout(2)
        assert first.recv(1) == b""
        assert rig.dispatcher.stats["evicted"] == 1
        assert rig.dispatcher.counts()["waiting_for_head"] == 1
    finally:
        rig.close()


def test_shedding_by_queue_length_answers_503_at_once() -> None:
    rig = Rig(shed_queue=1, retry_after=7)
    try:
        queued = rig.connect()  # no worker: it queues
        rig.spin()
        shed = rig.connect()
        rig.spin()
        shed.settimeout(2)
        answer = shed.recv(200)
        assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
        assert b"Retry-After: 7\r\n" in answer
        assert_full_head(answer)
        assert rig.dispatcher.stats["shed"] == 1
        assert rig.dispatcher.counts()["queued"] == 1
        queued.settimeout(0.2)
        with pytest.raises(TimeoutError):
            queued.recv(1)  # the first one still waits for a worker
    finally:
        rig.close()


def test_shedding_by_wait_time() -> None:
    rig = Rig(shed_wait=0.25)
    try:
        client = rig.connect()
        client.settimeout(3)
        rig.spin()
        rig.advance(0.24)
        assert rig.dispatcher.stats["shed"] == 0  # not yet
        assert rig.dispatcher.counts()["queued"] == 1
        rig.advance(0.02)
        assert rig.dispatcher.stats["shed"] == 1
        assert rig.dispatcher.counts()["queued"] == 0
        assert client.recv(100).startswith(b"HTTP/1.1 503 ")
    finally:
        rig.close()


def test_graceful_shutdown_serves_queued_work_then_closes_idle(rig: Rig) -> None:
    w = rig.worker(capacity=1)
    busy_client = rig.connect()
    got = recv_until(w, rig)
    assert got.fd is not None
    queued = rig.connect()
    idle = rig.connect(send=b"")
    late_sender = rig.connect(send=b"")
    rig.spin()
    rig.dispatcher.begin_shutdown()
    rig.spin()
    assert isinstance(w.channel.recv().message, protocol.Closing)  # type: ignore[union-attr]
    late = socket.create_connection(("127.0.0.1", rig.port))  # lands in the backlog only
    late.sendall(GET)
    rig.spin()
    assert rig.dispatcher.counts()["accepted"] == 4
    assert not rig.dispatcher.drained()
    socket.socket(fileno=got.fd).close()
    w.send(protocol.Done(got.message.conn_id))  # type: ignore[union-attr]
    late_sender.sendall(GET)  # a request already on its way when the stop began
    for _ in range(2):  # the queued one and the late sender's are both still served
        handed = recv_until(w, rig)
        assert isinstance(handed.message, protocol.Handoff) and handed.fd is not None
        socket.socket(fileno=handed.fd).close()
        w.send(protocol.Done(handed.message.conn_id))
    rig.spin()
    assert rig.dispatcher.drained()  # the idle connection does not hold the stop up...
    rig.dispatcher.close()
    idle.settimeout(2)
    assert idle.recv(1) == b""  # ...and is closed at the end
    late.close()
    del busy_client, queued


@pytest.mark.parametrize("reset", [False, True])
def test_client_hanging_up_mid_head_is_released_at_once(rig: Rig, reset: bool) -> None:
    client = rig.connect(send=b"GET / HTTP/1.1\r\nHost: t\r\n")
    rig.spin()
    assert rig.dispatcher.counts()["waiting_for_head"] == 1
    if reset:  # SO_LINGER 0: the close sends a reset
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
    client.close()
    rig.spin()
    assert rig.dispatcher.counts()["waiting_for_head"] == 0
    assert rig.dispatcher.stats["timed_out"] == 0  # dropped on the hang-up, not the timer


def test_peek_buffer_is_bounded_whatever_the_request_limits() -> None:
    """Unlimited request limits (a head bound of hundreds of MB) cost the master 1 MiB."""
    rig = Rig(max_head=300 * 1024 * 1024)
    try:
        assert rig.dispatcher._intake.peek_buffer_size == MAX_PEEK + 1
        w = rig.worker(capacity=1)
        rig.connect()  # an ordinary request still goes through
        got = recv_until(w, rig)
        assert isinstance(got.message, protocol.Handoff) and got.fd is not None
        os.close(got.fd)
    finally:
        rig.close()


def _two_workers_with_reserves_and_one_queued(rig: Rig) -> tuple[FakeWorker, FakeWorker]:
    a = rig.worker(capacity=1)
    b = rig.worker(capacity=1)
    for _ in range(5):
        rig.connect()
        rig.spin(2)
    # Each worker holds one connection to serve and one reserve; the fifth is queued.
    counts = rig.dispatcher.counts()
    assert (counts["busy"], counts["reserves"], counts["queued"]) == (2, 2, 1)
    return a, b


def test_reserve_older_than_the_patience_goes_before_the_queue(rig: Rig) -> None:
    a, b = _two_workers_with_reserves_and_one_queued(rig)
    first_of_a = recv_until(a, rig)
    reserve_of_a = protocol.decode(_peek_inbox(a)).conn_id  # type: ignore[union-attr]
    rig.advance(1.5 * RESERVE_PATIENCE)  # not exactly: float sums may fall just short
    # b serves both of its connections and becomes free while one is still queued: a's
    # reserve (older than the patience) is taken back and goes to b before the queue.
    _serve(b, recv_until(b, rig))
    _serve(b, recv_until(b, rig))
    moved = recv_until(b, rig)
    assert isinstance(moved.message, protocol.Handoff)
    assert moved.message.conn_id == reserve_of_a
    assert rig.dispatcher.stats["requeued"] == 1
    _serve(b, moved)
    _serve(a, first_of_a)
    last = recv_until(a, rig)  # the queued one became a's new reserve meanwhile
    assert isinstance(last.message, protocol.Handoff)
    assert last.message.conn_id not in (reserve_of_a, first_of_a.message.conn_id)  # type: ignore[union-attr]
    _serve(a, last)


def test_reserve_younger_than_the_patience_stays_while_others_are_queued(rig: Rig) -> None:
    a, b = _two_workers_with_reserves_and_one_queued(rig)
    first_of_a = recv_until(a, rig)
    reserve_of_a = protocol.decode(_peek_inbox(a)).conn_id  # type: ignore[union-attr]
    rig.advance(RESERVE_PATIENCE / 2)
    _serve(b, recv_until(b, rig))
    _serve(b, recv_until(b, rig))
    # b is free, but a's reserve has not waited long enough: the queued one goes to b.
    queued = recv_until(b, rig)
    assert isinstance(queued.message, protocol.Handoff)
    assert queued.message.conn_id != reserve_of_a
    assert protocol.decode(_peek_inbox(a)).conn_id == reserve_of_a  # type: ignore[union-attr]
    assert rig.dispatcher.stats["requeued"] == 0
    rig.advance(RESERVE_PATIENCE)  # every slot is busy again: nowhere to move it
    assert rig.dispatcher.stats["requeued"] == 0
    for w, got in ((b, queued), (a, first_of_a)):
        _serve(w, got)
    _serve(a, recv_until(a, rig))


def test_the_waiting_board_counts_queued_work_and_reserves_after_every_round(rig: Rig) -> None:
    w = rig.worker(capacity=1)
    board = rig.dispatcher.board
    assert board.waiting() == 0
    for _ in range(3):
        rig.connect()
    rig.spin()
    counts = rig.dispatcher.counts()
    assert (counts["busy"], counts["reserves"], counts["queued"]) == (1, 1, 1)
    assert board.waiting() == 2  # a worker about to go on with its connection must not
    first = recv_until(w, rig)
    _serve(w, first)
    rig.spin()
    assert board.waiting() == 1  # the reserve is being served; the queued one is the reserve
    for _ in range(2):
        _serve(w, recv_until(w, rig))
    rig.spin()
    assert board.waiting() == 0


def test_run_serves_rounds_until_woken(rig: Rig) -> None:
    # The fake clock never moves, so only the wake-up can end this run.
    w = rig.worker(capacity=1)
    rig.connect()
    rig.dispatcher.wake()  # e.g. a signal for the arbiter: the run ends after its round
    rig.dispatcher.run(3600)
    got = w.recv()
    assert got is not None and isinstance(got.message, protocol.Handoff)
    assert got.fd is not None
    os.close(got.fd)


def test_run_ends_at_its_timeout() -> None:
    rig = Rig()
    try:
        moving = iter(range(1000))
        # A millisecond per reading, so that the run's timeout passes after a few rounds.
        rig.dispatcher._clock = lambda: 1000.0 + next(moving) / 1000
        rig.dispatcher.run(0.0025)  # it returns without a wake-up
        assert next(moving) < 10
    finally:
        rig.close()
