"""The connection state machine: its transition table, and the one owner that applies it."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from gunicorn_fdpass.link.channel import Channel
from gunicorn_fdpass.master.links import WorkerLink
from gunicorn_fdpass.master.loop import EventLoop
from gunicorn_fdpass.master.states import (
    TRANSITIONS,
    WATCHED_STATES,
    ClientConnection,
    ConnState,
    Event,
    TransitionError,
    advance,
)
from gunicorn_fdpass.master.table import ConnectionTable

S, E = ConnState, Event


def fresh(conn_id: int = 1) -> ClientConnection:
    """A connection in state NEW (its client already gone: nothing here reads from it)."""
    a, b = socket.socketpair()
    b.close()
    return ClientConnection(conn_id, a)


def conn_in(state: ConnState) -> ClientConnection:
    conn = fresh()
    conn.state = state
    return conn


def test_the_table_is_exactly_the_documented_life_of_a_connection() -> None:
    assert {
        (S.NEW, E.HEAD_PENDING): S.WAITING_FOR_HEAD,
        (S.NEW, E.HEAD_READY): S.QUEUED,
        (S.WAITING_FOR_HEAD, E.HEAD_READY): S.QUEUED,
        (S.PARKED_IDLE, E.NEXT_HEAD_BEGAN): S.PARKED_STARTED,
        (S.PARKED_IDLE, E.HEAD_READY): S.QUEUED,
        (S.PARKED_STARTED, E.HEAD_READY): S.QUEUED,
        # Issue 13: a small body waits in the master too.
        (S.NEW, E.BODY_PENDING): S.WAITING_FOR_BODY,
        (S.WAITING_FOR_HEAD, E.BODY_PENDING): S.WAITING_FOR_BODY,
        (S.PARKED_IDLE, E.BODY_PENDING): S.WAITING_FOR_BODY,
        (S.PARKED_STARTED, E.BODY_PENDING): S.WAITING_FOR_BODY,
        (S.WAITING_FOR_BODY, E.HEAD_READY): S.QUEUED,
        (S.QUEUED, E.SENT): S.HANDED_OUT,
        (S.HANDED_OUT, E.TAKEN_BACK): S.QUEUED,
        (S.HANDED_OUT, E.FINISHED): S.CLOSED,
        (S.HANDED_OUT, E.PARKED): S.PARKED_IDLE,
        (S.HANDED_OUT, E.PARKED_PARTIAL): S.PARKED_STARTED,
        (S.HANDED_OUT, E.HEAD_READY): S.QUEUED,
        **{(state, E.DROPPED): S.CLOSED for state in S if state is not S.CLOSED},
    } == TRANSITIONS


def test_every_state_is_reachable_and_every_one_can_end() -> None:
    reached = {S.NEW}
    while True:
        more = {to for (state, _), to in TRANSITIONS.items() if state in reached} - reached
        if not more:
            break
        reached |= more
    assert reached == set(S)
    for state in S:
        if state is not S.CLOSED:
            assert TRANSITIONS[(state, E.DROPPED)] is S.CLOSED
    assert not any(state is S.CLOSED for state, _ in TRANSITIONS)  # CLOSED is final


@pytest.mark.parametrize(("state", "event"), [
    (state, event) for state in S for event in E if (state, event) not in TRANSITIONS])
def test_a_forbidden_transition_raises_and_changes_nothing(state: ConnState,
                                                           event: Event) -> None:
    conn = conn_in(state)
    with pytest.raises(TransitionError, match=f"{event.name} is not allowed in state "
                                              f"{state.name}"):
        advance(conn, event)
    assert conn.state is state
    conn.sock.close()


@pytest.mark.parametrize(("state", "event"), list(TRANSITIONS))
def test_an_allowed_transition_moves_on_and_returns_the_old_state(state: ConnState,
                                                                  event: Event) -> None:
    conn = conn_in(state)
    assert advance(conn, event) is state
    assert conn.state is TRANSITIONS[(state, event)]
    conn.sock.close()


# -- the owner ------------------------------------------------------------------------------

@pytest.fixture
def table() -> Iterator[ConnectionTable]:
    loop = EventLoop()
    t = ConnectionTable(loop, head_timeout=5.0, keepalive=2.0)
    t.on_client = lambda conn, mask: None
    yield t
    t.close_all([], in_child=False)


def link() -> WorkerLink:
    a, b = Channel.pair()
    return WorkerLink(a, b, b)


def handed_out(table: ConnectionTable, worker: WorkerLink, conn: ClientConnection,
               now: float) -> None:
    """Put a NEW connection into ``worker``'s hands, as the master does."""
    table.enqueue(conn, now)
    assert table.hand_out(worker, now) is conn


def test_the_table_keeps_each_connection_where_its_state_says(table: ConnectionTable) -> None:
    worker = link()
    waiting, parked = fresh(1), fresh(2)
    table.wait_for_head(waiting, now=10.0)
    handed_out(table, worker, parked, now=9.0)
    table.park(parked, now=10.0)  # its worker handed it back
    assert (waiting.state, parked.state) == (S.WAITING_FOR_HEAD, S.PARKED_IDLE)
    assert set(table.watched.values()) == {waiting, parked} and not worker.handed_out
    assert parked.holder is None
    assert (len(table.new), len(table.idle)) == (1, 1)
    table.head_began(parked, now=11.0)
    assert parked.state is S.PARKED_STARTED and len(table.started) == 1
    table.enqueue(waiting, now=12.0)
    table.enqueue(parked, now=12.5)
    assert list(table.queue) == [waiting, parked] and not table.watched
    table.audit([worker])
    assert table.hand_out(worker, now=13.0) is waiting
    assert waiting.state is S.HANDED_OUT and worker.handed_out == {1: waiting}
    assert waiting.holder is worker
    table.audit([worker])
    assert table.take_back(worker, [1, 99]) == 1  # an unknown id is ignored
    assert list(table.queue) == [waiting, parked]  # back at the head
    table.hand_out(worker, now=14.0)
    fd = waiting.fd
    table.finished(worker, 1)
    assert waiting.state is S.CLOSED and waiting.fd == -1
    with pytest.raises(OSError):
        socket.socket(fileno=fd).close()  # the master's copy is closed
    table.audit([worker])
    worker.close()


def test_a_connection_handed_back_with_part_of_a_head_waits_with_the_head_timeout(
        table: ConnectionTable) -> None:
    worker = link()
    conn = fresh()
    handed_out(table, worker, conn, now=1.0)
    conn.prefix = b"GET / HT"
    table.park(conn, now=2.0)
    assert conn.state is S.PARKED_STARTED and conn in table.started
    table.audit([worker])
    worker.close()


def test_a_connection_handed_back_with_a_whole_request_is_queued(
        table: ConnectionTable) -> None:
    worker = link()
    conn = fresh()
    handed_out(table, worker, conn, now=1.0)
    table.enqueue(conn, now=2.0)
    assert conn.state is S.QUEUED and list(table.queue) == [conn] and not worker.handed_out
    table.audit([worker])
    worker.close()


def test_audit_finds_a_handed_out_connection_held_by_another_link(
        table: ConnectionTable) -> None:
    worker, other = link(), link()
    conn = fresh()
    handed_out(table, worker, conn, now=1.0)
    conn.holder = other  # what a bug moving it by hand would do
    with pytest.raises(AssertionError, match="held by"):
        table.audit([worker, other])
    conn.holder = worker
    worker.close()
    other.close()


def test_closing_removes_a_connection_from_wherever_it_is(table: ConnectionTable) -> None:
    worker = link()
    conns = [fresh(i) for i in range(1, 5)]
    table.wait_for_head(conns[0], 1.0)
    for c in conns[1:]:
        table.enqueue(c, 1.0)
    table.hand_out(worker, 2.0)  # conns[1]
    table.close(conns[3])  # queued, not at the head
    table.close(conns[2])  # queued, at the head
    table.close(conns[1], link=worker)  # handed out
    table.close(conns[0], answer=b"HTTP/1.1 408 Request Timeout\r\n\r\n")  # watched
    assert all(c.state is S.CLOSED for c in conns)
    assert not (table.queue or table.watched or worker.handed_out or len(table.new))
    with pytest.raises(TransitionError):
        table.close(conns[0])  # closing twice is a bug
    worker.close()


def test_a_connection_in_the_wrong_state_is_refused_before_anything_moves(
        table: ConnectionTable) -> None:
    conn = fresh()
    table.wait_for_head(conn, 1.0)
    with pytest.raises(TransitionError):
        table.head_began(conn, 2.0)  # only a parked idle connection can begin a next head
    with pytest.raises(TransitionError):
        table.park(conn, 2.0)  # only a handed-out connection can be handed back
    assert conn.state is S.WAITING_FOR_HEAD and table.watched and len(table.new) == 1
    table.audit([])


def test_audit_finds_a_connection_out_of_place(table: ConnectionTable) -> None:
    conn = fresh()
    table.enqueue(conn, 1.0)
    conn.state = S.PARKED_IDLE  # what a bug writing the state directly would do
    with pytest.raises(AssertionError, match="is in queue"):
        table.audit([])
    conn.state = S.QUEUED


def test_watched_states_are_the_ones_with_a_timer() -> None:
    assert {S.WAITING_FOR_HEAD, S.WAITING_FOR_BODY, S.PARKED_IDLE,
            S.PARKED_STARTED} == WATCHED_STATES
