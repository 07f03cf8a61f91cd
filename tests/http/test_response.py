"""Unit tests of gunicorn_fdpass.http.response: the framing decision, without a socket.

The wire-level behaviour is covered through serve_connection (test_connection.py,
test_http_conformance.py); these pin the decision table of ``Response._final_headers`` and
show the ResponseSink interface in isolation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import IO

import h11
import pytest

from gunicorn_fdpass.http.request_rules import ParsedRequest
from gunicorn_fdpass.http.response import Response
from tests.support.serve import FakeLog


@dataclass
class FakeSink:
    """A ResponseSink that records what is sent."""

    forbid_reuse: bool = False
    plain: bool = True
    sent: list[bytes] = field(default_factory=list)
    begun: int = 0

    def blocking(self) -> bool:
        return True

    def sendall(self, data: bytes) -> None:
        self.sent.append(data)

    def sendfile(self, file: IO[bytes], offset: int, count: int) -> int:
        raise AssertionError("not used here")

    def response_begun(self) -> None:
        self.begun += 1

    def unread_body_forbids_reuse(self) -> bool:
        return self.forbid_reuse


def make_response(
    method: str = "GET",
    version: tuple[int, int] = (1, 1),
    *,
    sink: FakeSink | None = None,
    want_close: bool = False,
    keep_alive_10: bool = False,
) -> tuple[Response, FakeSink]:
    sink = sink or FakeSink()
    request = ParsedRequest(method, "/", "/", "", "", version, [])
    resp = Response(
        sink,
        h11.Connection(h11.SERVER),
        request,
        server_software="test-server/1",
        log=FakeLog(),
        want_close=want_close,
        keep_alive_10=keep_alive_10,
    )
    return resp, sink


def framing(resp: Response) -> list[tuple[str, str]]:
    """The header fields the server chose (not Date/Server, not the application's others)."""
    return [
        (name, value)
        for name, value in resp.info.headers
        if name in ("Content-Length", "Transfer-Encoding", "Connection")
    ]


CL5 = [("Content-Length", "5")]
CHUNKED = [("Transfer-Encoding", "chunked")]
CLOSE = [("Connection", "close")]


@pytest.mark.parametrize(
    ("method", "version", "status", "app_headers", "expected", "bodyless", "must_close"),
    [
        ("GET", (1, 1), "200 OK", CL5, CL5, False, False),
        ("GET", (1, 1), "200 OK", [], CHUNKED, False, False),
        ("GET", (1, 0), "200 OK", [], CLOSE, False, True),
        ("GET", (1, 0), "200 OK", CL5, CL5, False, False),
        ("HEAD", (1, 1), "200 OK", [], CHUNKED, True, False),
        ("HEAD", (1, 0), "200 OK", [], [], True, False),
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
    resp, sink = make_response(method, version)
    resp.starter.start_response(status, app_headers)
    resp.body(b"hello")
    resp.finish()
    assert framing(resp) == expected
    assert (resp.bodyless, resp.must_close, resp.finished) == (bodyless, must_close, True)
    assert resp.info.sent == (0 if bodyless else 5)
    assert sink.begun == 1


def test_http10_keep_alive_is_announced_only_with_a_length() -> None:
    resp, _ = make_response(version=(1, 0), keep_alive_10=True)
    resp.starter.start_response("200 OK", CL5)
    resp.body(b"hello")
    resp.finish()
    assert framing(resp) == [*CL5, ("Connection", "keep-alive")]

    resp, _ = make_response(version=(1, 0), keep_alive_10=True)
    resp.starter.start_response("200 OK", [])
    resp.finish()
    assert framing(resp) == CLOSE and resp.must_close


def test_unread_body_that_forbids_reuse_says_close() -> None:
    resp, _ = make_response(sink=FakeSink(forbid_reuse=True))
    resp.starter.start_response("200 OK", CL5)
    resp.body(b"hello")
    resp.finish()
    assert framing(resp) == CL5 + CLOSE and resp.must_close


def test_chunked_body_bytes_go_out_in_one_send() -> None:
    resp, sink = make_response()
    resp.starter.start_response("200 OK", [("X-A", " 1 ")])
    resp.body(b"abc")
    resp.body(b"")  # empty pieces would end a chunked body: skipped
    resp.body(b"de")
    resp.finish()
    assert len(sink.sent) == 1
    head, _, body = sink.sent[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\nServer: test-server/1\r\nDate: ")
    assert head.endswith(b"\r\nX-A: 1\r\nTransfer-Encoding: chunked")
    assert body == b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    assert resp.info.sent == 5


@pytest.mark.parametrize("value", ["-1", "1" * 21, "5, 5", "abc"])
def test_invalid_application_content_length_is_refused(value: str) -> None:
    resp, sink = make_response()
    resp.starter.start_response("200 OK", [("Content-Length", value)])
    with pytest.raises(ValueError, match="Content-Length"):
        resp.finish()
    assert sink.sent == [] and not resp.committed
