"""What a worker makes of the master hanging up its channel (worker/linked.py)."""

from __future__ import annotations

import socket

from gunicorn_fdpass.link import messages
from gunicorn_fdpass.link.channel import Channel
from gunicorn_fdpass.worker.linked import closing_unread


def test_a_closing_sent_before_the_hang_up_is_found() -> None:
    # The server stopping: Closing, then the master closes the channel, and the worker
    # (stopped by Gunicorn's SIGTERM meanwhile) only finds out when a send fails.
    master, worker = Channel.pair()
    master.send(messages.Closing())
    master.close()
    assert closing_unread(worker)
    worker.close()


def test_a_hang_up_without_closing_is_a_master_gone() -> None:
    master, worker = Channel.pair()
    master.close()
    assert not closing_unread(worker)
    worker.close()


def test_handoffs_read_on_the_way_are_closed() -> None:
    master, worker = Channel.pair()
    client, server = socket.socketpair()
    master.send(messages.Handoff(7, b"", socket.AF_UNIX), fd=server.fileno())
    server.close()
    master.send(messages.Closing())
    master.close()
    assert closing_unread(worker)
    # The handoff's fd was the last copy of the server end: closed, the client sees EOF.
    client.settimeout(2.0)
    assert client.recv(1) == b""
    client.close()
    worker.close()


def test_a_channel_already_closed_says_no() -> None:
    master, worker = Channel.pair()
    worker.close()
    assert not closing_unread(worker)
    master.close()
