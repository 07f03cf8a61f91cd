"""Request smuggling and response splitting: every ambiguous framing is refused before the
application runs, and nothing pipelined behind a refused request is ever served."""

from __future__ import annotations

from typing import Any

import pytest

from gunicorn_fdpass.worker.connection import Closed
from tests.support.serve import StartResponse, parse, serve

pytestmark = pytest.mark.timeout(10)

HOST = b"Host: t\r\n"
# What a smuggler hides behind the first request: it must never reach the application.
SMUGGLED = b"GET /smuggled HTTP/1.1\r\n" + HOST + b"\r\n"


class Recorder:
    """An app that reads the whole body and records every path it is called for."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        self.paths.append(environ["PATH_INFO"])
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]


def post(framing: bytes, body: bytes) -> bytes:
    return b"POST /first HTTP/1.1\r\n" + HOST + framing + b"\r\n" + body


CL5 = b"Content-Length: 5\r\n"
TE = b"Transfer-Encoding: chunked\r\n"
END = b"0\r\n\r\n"  # a last chunk

CASES: list[tuple[str, bytes, int]] = [
    # CL.TE: a front end that uses Content-Length forwards everything; TE would split it.
    ("cl-te", post(b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\nG"), 400),
    ("te-cl", post(TE + b"Content-Length: 3\r\n", b"8\r\nSMUGGLED\r\n" + END), 400),
    # TE.TE: obfuscated Transfer-Encoding that one parser may ignore and the other honour.
    ("xchunked", post(CL5 + b"Transfer-Encoding: xchunked\r\n", END), 501),
    ("te-space-before-colon", post(CL5 + b"Transfer-Encoding : chunked\r\n", END), 400),
    ("te-leading-space-line", post(CL5 + b" Transfer-Encoding: chunked\r\n", END), 400),
    ("te-tab-value-with-cl", post(CL5 + b"Transfer-Encoding:\tchunked\r\n", END), 400),
    ("te-trailing-junk", post(b"Transfer-Encoding: chunked x\r\n", END), 501),
    ("te-duplicate-headers", post(TE + TE, END), 400),
    ("te-duplicate-with-identity", post(TE + b"Transfer-Encoding: identity\r\n", END), 400),
    ("te-chunked-identity", post(b"Transfer-Encoding: chunked, identity\r\n", END), 400),
    ("te-upper-case-with-cl", post(CL5 + b"TRANSFER-ENCODING: CHUNKED\r\n", END), 400),
    ("te-vertical-tab", post(b"Transfer-Encoding: \x0bchunked\r\n", END), 400),
    ("te-null", post(b"Transfer-Encoding: chunked\x00\r\n", END), 400),
    ("te-obs-fold", post(b"Transfer-Encoding:\r\n chunked\r\n", END), 400),
    ("te-http10", b"POST /first HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    # CL.CL: two lengths, or a list.
    ("cl-cl", post(CL5 + b"Content-Length: 0\r\n", b"hello"), 400),
    ("cl-list", post(b"Content-Length: 0, 5\r\n", b"hello"), 400),
    ("cl-plus", post(b"Content-Length: +0\r\n", b""), 400),
    # Request splitting: line terminators the head parser must not split on.
    ("bare-lf-header", b"GET /first HTTP/1.1\r\nHost: t\nX: y\r\n\r\n", 400),
    ("bare-cr-header", b"GET /first HTTP/1.1\r\nHost: t\rGET /smuggled HTTP/1.1\r\n\r\n", 400),
    ("bare-lf-chunk", post(TE, b"5\nhello\n0\n\n"), 400),
    ("chunk-size-overflow-ext", post(TE, b"5;\nX\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-data-longer", post(TE, b"1\r\nAB\r\n0\r\n\r\n"), 400),
    ("trailer-content-length", post(TE, b"0\r\nContent-Length: 40\r\n\r\n"), 400),
    ("target-with-space", b"GET /first HTTP/1.1 /smuggled HTTP/1.1\r\n" + HOST + b"\r\n", 400),
]


@pytest.mark.parametrize(("name", "request_bytes", "status"), CASES, ids=[c[0] for c in CASES])
def test_ambiguous_framing_is_refused_and_nothing_behind_it_is_served(
    name: str, request_bytes: bytes, status: int
) -> None:
    app = Recorder()
    out = serve(app, request_bytes + SMUGGLED, client_eof=True)
    responses, _rest = parse(out.raw, ["POST"])
    assert responses[0].status == status
    assert "/smuggled" not in app.paths
    if status >= 400:
        assert app.paths == []
        assert out.result == Closed()
        assert responses[0].headers["connection"] == "close"
        assert out.raw.count(b"HTTP/1.1 ") == 1  # exactly one response, then the close


def test_well_framed_pipeline_is_served_in_order() -> None:
    # The control case: the same bytes, well framed, are two requests served in order.
    app = Recorder()
    request = post(b"Content-Length: 5\r\n", b"hello") + SMUGGLED
    out = serve(app, request, client_eof=True)
    responses, _ = parse(out.raw, ["POST", "GET"])
    assert [r.status for r in responses] == [200, 200]
    assert app.paths == ["/first", "/smuggled"]
    assert responses[0].body == b"hello"


def test_underscore_transfer_encoding_is_dropped_not_honoured() -> None:
    # header_map = drop: "Transfer_Encoding" is not Transfer-Encoding, so Content-Length frames.
    app = Recorder()
    request = post(b"Content-Length: 5\r\nTransfer_Encoding: chunked\r\n", b"0\r\n\r\n")
    out = serve(app, request + SMUGGLED, client_eof=True)
    responses, _ = parse(out.raw, ["POST", "GET"])
    assert responses[0].body == b"0\r\n\r\n"
    assert app.paths == ["/first", "/smuggled"]  # a well-framed second request


def test_gzip_chunked_is_refused_and_nothing_behind_it_is_served() -> None:
    # Gunicorn serves "gzip, chunked"; h11, which parses the client's head, takes only
    # "chunked" and answers 501 (docs/http-conformance.md). Nothing reaches the application.
    app = Recorder()
    request = post(b"Transfer-Encoding: gzip, chunked\r\n", b"3\r\nabc\r\n0\r\n\r\n") + SMUGGLED
    out = serve(app, request, client_eof=True)
    responses, _ = parse(out.raw, ["POST"])
    assert responses[0].status == 501
    assert responses[0].headers["connection"] == "close"
    assert app.paths == []


@pytest.mark.parametrize(
    "value",
    [
        "a\r\nSet-Cookie: evil=1",
        "a\nSet-Cookie: evil=1",
        "a\rSet-Cookie: evil=1",
        "a\x00b",
        "a\r\n\r\nHTTP/1.1 200 OK",
    ],
)
def test_response_splitting_through_app_headers_gives_500(value: str) -> None:
    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [("X-Reflected", value)])
        return [b"body"]

    out = serve(app, b"GET / HTTP/1.1\r\n" + HOST + b"\r\n")
    responses, _ = parse(out.raw)
    assert responses[0].status == 500
    assert b"evil" not in out.raw and b"X-Reflected" not in out.raw
    assert out.log.at("exception")


@pytest.mark.parametrize("name", ["X-A\r\nSet-Cookie", "X-A:", "X A", "X-A\n"])
def test_response_splitting_through_app_header_names_gives_500(name: str) -> None:
    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [(name, "v")])
        return [b"body"]

    out = serve(app, b"GET / HTTP/1.1\r\n" + HOST + b"\r\n")
    assert parse(out.raw)[0][0].status == 500
    assert b"Set-Cookie" not in out.raw


def test_status_line_splitting_gives_500() -> None:
    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        start_response("200 OK\r\nSet-Cookie: evil=1", [])
        return [b"body"]

    out = serve(app, b"GET / HTTP/1.1\r\n" + HOST + b"\r\n")
    assert parse(out.raw)[0][0].status == 500
    assert b"evil" not in out.raw
