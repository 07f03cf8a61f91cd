"""Property-based fuzzing of the request path: random bytes and mutations of valid requests,
fed to serve_connection over a socketpair, never raise, never hang, and always get well-formed
responses (or just a close)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gunicorn_fdpass.http.request_head import receive_head
from gunicorn_fdpass.http.request_rules import Rejected, RequestRules, find_head_end
from gunicorn_fdpass.worker.connection import Closed, Idle
from tests.support.serve import StartResponse, serve

pytestmark = pytest.mark.timeout(60)

SEEDS = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /p?q=1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;x=y\r\nhello\r\n0\r\nT: v\r\n\r\n",
    b"POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
    b"HEAD / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
    b"OPTIONS * HTTP/1.1\r\nHost: a\r\nX-Forwarded-Proto: https\r\n\r\n",
    b"GET http://a/b HTTP/1.1\r\nHost: a\r\nX_A: 1\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
]
INTERESTING = [b"\r", b"\n", b"\r\n", b" ", b"\t", b":", b"\x00", b",", b";", b"0", b"\xff", b"_"]

_STATUS_LINE = re.compile(rb"HTTP/1\.1 ([1-5][0-9]{2}) [^\r\n]*\r\n")
_FIELD = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+: [\t\x20-\x7e\x80-\xff]*")


def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    body = environ["wsgi.input"].read()
    headers = [("Content-Length", str(len(body)))]
    if environ["REQUEST_METHOD"] == "HEAD":
        headers.append(("X-Head", "1"))  # tells the checker that no body follows
    start_response("200 OK", headers)
    return [body]


def assert_well_formed(raw: bytes) -> None:
    """``raw`` is a sequence of complete HTTP/1.1 responses (each Content-Length framed,
    as every response of this app and every error response is), nothing after a close."""
    pos = 0
    while pos < len(raw):
        match = _STATUS_LINE.match(raw, pos)
        assert match, f"bad status line at {pos}: {raw[pos:pos + 80]!r}"
        end = raw.index(b"\r\n\r\n", match.start())
        lines = raw[match.end() : end].split(b"\r\n") if end > match.end() - 2 else []
        fields = {}
        for line in lines:
            if not line:
                continue
            assert _FIELD.fullmatch(line), line
            name, _, value = line.partition(b": ")
            fields[name.lower()] = value
        pos = end + 4
        if int(match.group(1)) == 100:
            continue
        length = 0 if b"x-head" in fields else int(fields[b"content-length"])
        assert pos + length <= len(raw), "truncated body"
        pos += length
        if fields.get(b"connection") == b"close":
            assert pos == len(raw), "bytes after a Connection: close response"


def check(request: bytes) -> None:
    out = serve(app, request, client_eof=True, io_timeout=0.5)
    assert isinstance(out.result, (Closed, Idle))
    assert not out.log.at("exception"), out.log.records
    assert_well_formed(out.raw)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["insert", "replace", "delete", "truncate", "dup"]))
        pos = draw(st.integers(0, len(data)))
        if op == "insert":
            data[pos:pos] = draw(st.sampled_from(INTERESTING) | st.binary(min_size=1, max_size=4))
        elif op == "replace" and pos < len(data):
            data[pos : pos + 1] = draw(st.sampled_from(INTERESTING))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
        elif op == "truncate":
            del data[pos:]
        elif op == "dup":
            data[pos:pos] = data[pos : pos + draw(st.integers(1, 40))]
    return bytes(data)


_SETTINGS = settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@_SETTINGS
@given(st.binary(max_size=600))
def test_random_bytes(request: bytes) -> None:
    check(request)


@_SETTINGS
@given(mutated())
def test_mutated_valid_requests(request: bytes) -> None:
    check(request)


@settings(max_examples=400, deadline=None)
@given(mutated())
def test_parser_only_raises_rejected(request: bytes) -> None:
    """The sans-IO layer, without sockets (h11 with Gunicorn's rules around it for the head,
    then h11 for the body, fed a few bytes at a time): any input either parses, asks for
    more, or is Rejected with a 4xx/5xx hint; nothing else ever escapes, and h11 never holds
    more of a Content-Length body than the
    validator declared."""
    rules = RequestRules()
    try:
        end = find_head_end(request, rules)
        if end < 0:
            return
        parsed, body = receive_head(request[:end], rules, trusted=True)
        conn = body.conn
        rest = request[end:]
        received = 0
        while (data := body.next_data()) != b"":
            if data is None:
                if not rest:
                    break
                take = min(body.wants(), 7)
                body.receive(rest[:take])
                rest = rest[take:]
            else:
                received += len(data)
        # An empty body needs no h11 connection; any other body is read through one.
        assert (conn is None) == (not parsed.chunked and not parsed.content_length)
        if body.done and not parsed.chunked:
            assert received == (parsed.content_length or 0)
            assert conn is None or conn.trailing_data[0] == b""
    except Rejected as exc:
        assert exc.status_hint in (400, 403, 414, 417, 431, 501)


_HEAD_END_OR_BARE_LF = re.compile(rb"\r\n\r\n|(?<!\r)\n")


def _head_end_by_regex(data: bytes, resume: int) -> int | str:
    """What find_head_end answers for a head within its limits, by one regex scan (as it
    did before its faster path): the end, -1, or "bare LF"."""
    start = 2 if data[:2] == b"\r\n" else 0
    match = _HEAD_END_OR_BARE_LF.search(data, max(start, resume - 3))
    if match is None:
        return -1
    return "bare LF" if match.end() - match.start() == 1 else match.end()


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"a", b" ", b"\r\n\r\n"]),
                max_size=30).map(b"".join), st.integers(0, 40))
def test_find_head_end_agrees_with_a_single_regex_scan(data: bytes, resume: int) -> None:
    rules = RequestRules()
    # resume only ever points past bytes scanned without finding an end or a bare LF.
    if resume > len(data) or _head_end_by_regex(data[:resume], 0) != -1:
        resume = 0
    expected = _head_end_by_regex(data, resume)
    try:
        got: int | str = find_head_end(data, rules, resume)
    except Rejected as exc:
        if exc.reason != "bare LF as a line terminator":
            return  # a size limit or an empty request line, checked apart from the scan
        got = "bare LF"
    assert got == expected
