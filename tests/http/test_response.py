"""Unit tests of gunicorn_fdpass.http.response: the framing decision and the output queue,
without a socket (the writer is sans-IO: the driver takes its bytes).

The wire-level behaviour is covered through serve_connection (tests/worker/test_connection.py,
test_http_conformance.py); these pin the decision table of ``Response._server_fields``.
"""

from __future__ import annotations

import pytest

from gunicorn_fdpass.http.keep_alive import After, Policy, closes, request_facts
from gunicorn_fdpass.http.request_rules import ParsedRequest
from gunicorn_fdpass.http.response import Response
from tests.support.serve import FakeLog

POLICY = Policy(keepalive=True, parkable=True, burst=16)


def make_response(
    method: str = "GET",
    version: tuple[int, int] = (1, 1),
    *,
    tokens: frozenset[str] = frozenset(),
    forbid_reuse: bool = False,
) -> Response:
    request = ParsedRequest(method, "/", "/", "", "", version, [])
    written: list[bytes] = []
    return Response(
        request,
        request_facts(version, set(tokens), False),
        POLICY,
        After.CONTINUE,
        server_software="test-server/1",
        log=FakeLog(),
        unread_body=lambda: forbid_reuse,
        write=written.append,
    )


def send_all(resp: Response) -> bytes:
    """What a driver sends: everything queued, confirmed."""
    data = resp.take()
    resp.sent()
    return data


def framing(resp: Response) -> list[tuple[str, str]]:
    """The header fields the server chose (not Date/Server, not the application's others)."""
    return [
        (name, value)
        for name, value in resp.info.headers
        if name in ("Content-Length", "Transfer-Encoding", "Connection")
    ]


def closing(resp: Response) -> bool:
    return closes(resp.facts, POLICY, After.CONTINUE)


CL5 = [("Content-Length", "5")]
CHUNKED = [("Transfer-Encoding", "chunked")]
CLOSE = [("Connection", "close")]


@pytest.mark.parametrize(
    ("method", "version", "status", "app_headers", "expected", "bodyless", "must_close"),
    [
        ("GET", (1, 1), "200 OK", CL5, CL5, False, False),
        ("GET", (1, 1), "200 OK", [], CHUNKED, False, False),
        ("GET", (1, 0), "200 OK", [], CLOSE, False, True),
        ("GET", (1, 0), "200 OK", CL5, CL5 + CLOSE, False, True),  # no keep-alive asked
        ("HEAD", (1, 1), "200 OK", [], CHUNKED, True, False),
        ("HEAD", (1, 1), "200 OK", CL5, CL5, True, False),
        ("GET", (1, 1), "204 No Content", CL5, [], True, False),
        ("GET", (1, 1), "304 Not Modified", [], [], True, False),
        ("GET", (1, 1), "304 Not Modified", CL5, CL5, True, False),
        ("CONNECT", (1, 1), "200 OK", [], [], True, False),
        ("CONNECT", (1, 1), "403 Forbidden", [], CHUNKED, False, False),
        ("GET", (1, 1), "200 OK", [("Connection", "Keep-Alive, close")], CHUNKED + CLOSE,
         False, True),
    ],
)
def test_framing_decision(
    method: str,
    version: tuple[int, int],
    status: str,
    app_headers: list[tuple[str, str]],
    expected: list[tuple[str, str]],
    bodyless: bool,
    must_close: bool,
) -> None:
    resp = make_response(method, version)
    resp.starter.start_response(status, app_headers)
    resp.body(b"hello")
    resp.finish()
    send_all(resp)
    assert framing(resp) == expected
    assert (resp.bodyless, closing(resp), resp.finished) == (bodyless, must_close, True)
    assert resp.info.sent == (0 if bodyless else 5)


def test_http10_keep_alive_is_announced_only_with_a_length() -> None:
    resp = make_response(version=(1, 0), tokens=frozenset({"keep-alive"}))
    resp.starter.start_response("200 OK", CL5)
    resp.body(b"hello")
    resp.finish()
    assert framing(resp) == [*CL5, ("Connection", "keep-alive")] and not closing(resp)

    resp = make_response(version=(1, 0), tokens=frozenset({"keep-alive"}))
    resp.starter.start_response("200 OK", [])
    resp.finish()
    assert framing(resp) == CLOSE and closing(resp)


def test_unread_body_that_forbids_reuse_says_close() -> None:
    resp = make_response(forbid_reuse=True)
    resp.starter.start_response("200 OK", CL5)
    resp.body(b"hello")
    resp.finish()
    assert framing(resp) == CL5 + CLOSE and closing(resp)


def test_chunked_body_bytes_are_taken_in_one_piece() -> None:
    resp = make_response()
    resp.starter.start_response("200 OK", [("X-A", " 1 ")])
    assert resp.body(b"abc") is False  # small: no need to send yet
    resp.body(b"")  # empty pieces would end a chunked body: skipped
    resp.body(b"de")
    resp.finish()
    assert resp.info.sent == 0 and not resp.finished  # nothing sent yet
    head, _, body = send_all(resp).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\nServer: test-server/1\r\nDate: ")
    assert head.endswith(b"\r\nX-A: 1\r\nTransfer-Encoding: chunked")
    assert body == b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    assert resp.info.sent == 5 and resp.finished
    assert resp.take() == b""


def test_a_full_queue_asks_to_be_sent() -> None:
    resp = make_response()
    resp.starter.start_response("200 OK", [])
    assert resp.body(b"x" * (64 * 1024)) is True


def test_error_replaces_an_uncommitted_response_and_closes() -> None:
    resp = make_response()
    resp.starter.start_response("200 OK", CL5)
    data = resp.error(500)
    assert data.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert b"\r\nConnection: close\r\n" in data and closing(resp)
    assert resp.info.status_code == 500
    assert resp.error(400) == b""  # one final response per request


@pytest.mark.parametrize("value", ["-1", "1" * 21, "5, 5", "abc"])
def test_invalid_application_content_length_is_refused(value: str) -> None:
    resp = make_response()
    resp.starter.start_response("200 OK", [("Content-Length", value)])
    with pytest.raises(ValueError, match="Content-Length"):
        resp.finish()
    assert resp.take() == b"" and not resp.committed
