"""Polite closing in the worker: after an error answer, or with a request body left unread, the
worker lingers (reads and drops what the client still sends, bounded) so that its close is a
FIN after the answer, not a reset. Over real TCP loopback: a reset is a TCP thing."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from gunicorn_fdpass.worker.connection import serve_connection
from gunicorn_fdpass.worker.transport import LINGER_SECONDS
from tests.support.serve import FakeHooks, FakeLog, make_config


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return client, server


def _ignore_body_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("500 Oops", [("Content-Length", "0"), ("Connection", "close")])
    return []


def _serve_in_thread(server: socket.socket, app: Any) -> threading.Thread:
    def run() -> None:
        try:
            serve_connection(server, b"", app, make_config(), FakeHooks(), FakeLog())
        finally:
            server.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _read_to_eof(client: socket.socket) -> bytes:
    client.settimeout(5)
    data = b""
    while chunk := client.recv(65536):
        data += chunk
    return data


def _more_then_eof(client: socket.socket, thread: threading.Thread) -> None:
    """The client sends more after the answer, then closes its side: the worker has read it
    all, so the client's socket sees no reset."""
    client.sendall(b"x" * 20000)
    client.shutdown(socket.SHUT_WR)
    thread.join(5)
    assert not thread.is_alive()
    assert client.recv(1) == b""  # ConnectionResetError if the worker had closed early
    client.close()


def test_after_an_error_answer_the_worker_lingers_for_the_rest() -> None:
    client, server = _tcp_pair()
    thread = _serve_in_thread(server, _ignore_body_app)
    client.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nBad\x01: x\r\n\r\n")
    assert _read_to_eof(client).startswith(b"HTTP/1.1 400 ")
    _more_then_eof(client, thread)


def test_with_an_unread_body_the_worker_lingers_after_its_response() -> None:
    client, server = _tcp_pair()
    thread = _serve_in_thread(server, _ignore_body_app)
    client.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n" + b"y" * 100)
    assert _read_to_eof(client).startswith(b"HTTP/1.1 500 ")
    _more_then_eof(client, thread)


def test_lingering_is_bounded_in_time() -> None:
    client, server = _tcp_pair()
    thread = _serve_in_thread(server, _ignore_body_app)
    client.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nBad\x01: x\r\n\r\n")
    started = time.monotonic()
    assert _read_to_eof(client).startswith(b"HTTP/1.1 400 ")
    thread.join(LINGER_SECONDS + 3)  # the client never closes: the worker gives up
    assert not thread.is_alive()
    assert time.monotonic() - started >= LINGER_SECONDS * 0.9
    client.close()
