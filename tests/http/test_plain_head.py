"""The plain-head fast path of gunicorn_fdpass.http.request_head gives the same result as h11
with Gunicorn's rules around it: the same request, or a refusal with the same status (and, for
the one thing only h11 refuses, the same words)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gunicorn_fdpass.http import request_head
from gunicorn_fdpass.http.request_head import new_parser, parse_head, receive_head
from gunicorn_fdpass.http.request_rules import ParsedRequest, Rejected, RequestRules


def through_h11(head: bytes, rules: RequestRules, trusted: bool) -> ParsedRequest | int:
    """The request as h11 and the rules read it (a given conn forces h11), or the status."""
    try:
        return parse_head(head, rules, trusted=trusted, conn=new_parser(rules))
    except Rejected as exc:
        return exc.status_hint


def fast(head: bytes, rules: RequestRules, trusted: bool) -> ParsedRequest | int | None:
    """What the fast path makes of it: None when it leaves the head to h11."""
    try:
        return request_head._parse_plain(head, rules, trusted=trusted)
    except Rejected as exc:
        return exc.status_hint


def assert_same(head: bytes, rules: RequestRules | None = None, trusted: bool = False) -> bool:
    """Both paths agree; True if the fast path took the head."""
    rules = rules or RequestRules()
    got = fast(head, rules, trusted)
    if got is None:
        return False
    assert got == through_h11(head, rules, trusted), head
    return True


@pytest.mark.parametrize("head", [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"\r\nGET /p?q=1#f HTTP/1.1\r\nHost: a:80\r\nAccept: */*\r\nX:  b c \t\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",  # no Host needed before 1.1
    b"GET http://a/b?c HTTP/1.1\r\nHost: a\r\nX-Forwarded-Proto: https\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nX: \xff\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nEmpty:\r\nSCRIPT_NAME: /x\r\nA_B: 1\r\n\r\n",
])
def test_plain_heads_take_the_fast_path_with_the_same_request(head: bytes) -> None:
    assert assert_same(head)
    assert assert_same(head, trusted=True)


@pytest.mark.parametrize(("head", "status"), [
    (b"GET / HTTP/1.1\r\n\r\n", 400),  # h11: missing Host
    (b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", 400),  # h11: repeated Host
    (b"GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n", 400),
    (b"get / HTTP/1.1\r\nHost: a\r\n\r\n", 400),  # Gunicorn's method rule
    (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 400),  # Gunicorn's version rule
    (b"GET a HTTP/1.1\r\nHost: a\r\n\r\n", 400),  # authority-form, not CONNECT
    (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),  # Host syntax
    (b"GET / HTTP/1.1\r\nHost: a\r\nExpect: x\r\n\r\n", 417),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"y" * 9000 + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: 1\r\n" * 100 + b"\r\n", 431),
])
def test_refusals_have_the_same_status(head: bytes, status: int) -> None:
    assert fast(head, RequestRules(), False) == status
    assert through_h11(head, RequestRules(), False) == status


def test_the_host_refusal_has_h11s_words() -> None:
    head = b"GET / HTTP/1.1\r\nX: 1\r\n\r\n"
    with pytest.raises(Rejected) as plain:
        request_head._parse_plain(head, RequestRules(), trusted=False)
    with pytest.raises(Rejected) as slow:
        parse_head(head, RequestRules(), trusted=False, conn=new_parser(RequestRules()))
    assert plain.value.reason == slow.value.reason


@pytest.mark.parametrize("head", [
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",  # a framing field
    b"POST / HTTP/1.1\r\nHost: a\r\ntransfer-encoding: chunked\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n 2\r\n\r\n",  # obs-fold
    b"GET / HTTP/1.1\r\nHost: a\r\nX : 1\r\n\r\n",  # space before the colon
    b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01\r\n\r\n",  # a control character
    b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",  # not h11's request line
    b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
    b"GET / http/1.1\r\nHost: a\r\n\r\n",
])
def test_other_heads_are_left_to_h11(head: bytes) -> None:
    assert fast(head, RequestRules(), False) is None


def test_strip_header_spaces_always_goes_through_h11() -> None:
    head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    assert fast(head, RequestRules(strip_header_spaces=True), False) is None


def test_receive_head_gives_an_empty_finished_body() -> None:
    _, body = receive_head(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", RequestRules(),
                           trusted=False)
    assert body.conn is None and body.done and body.remaining == 0 and body.wants() == 0
    assert body.next_data() == b"" and body.trailing() == b"" and body.eof_error() is None
    # The same request through h11 ends the same way.
    _, slow = receive_head(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
                           RequestRules(), trusted=False)
    assert slow.conn is not None and slow.done and slow.trailing() == b""


# -- generated heads ---------------------------------------------------------------------------

_METHODS = st.sampled_from([b"GET", b"HEAD", b"POST", b"OPTIONS", b"CONNECT", b"get", b"G",
                            b"GET#", b"M-SEARCH", b"PROPFIND"])
_TARGETS = st.sampled_from([b"/", b"/a?b=c#d", b"*", b"http://h/p", b"h:443", b"/%7e",
                            b"/\xff", b"/a b", b""])
_VERSIONS = st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1.1 ",
                             b"http/1.1"])
_NAMES = st.sampled_from([b"Host", b"host", b"X", b"Accept", b"Connection", b"Expect",
                          b"X-Forwarded-Proto", b"SCRIPT_NAME", b"A_B", b"Content-Type",
                          b"Upgrade", b"Bad Name", b"X ", b""])
_VALUES = st.one_of(
    st.sampled_from([b"a", b"", b" a ", b"\ta b\t", b"close", b"keep-alive", b"100-continue",
                     b"https", b"websocket", b"h:80", b"a b", b"\xff", b"[::1]:8"]),
    st.binary(max_size=12),
)
_FIELDS = st.lists(st.tuples(_NAMES, _VALUES), max_size=6)


@settings(max_examples=600, deadline=None)
@given(method=_METHODS, target=_TARGETS, version=_VERSIONS, fields=_FIELDS,
       blank=st.booleans(), trusted=st.booleans(), fields_limit=st.sampled_from([100, 2]),
       field_size=st.sampled_from([8190, 12]))
def test_generated_heads_agree(method: bytes, target: bytes, version: bytes,
                               fields: list[tuple[bytes, bytes]], blank: bool, trusted: bool,
                               fields_limit: int, field_size: int) -> None:
    head = b"\r\n" if blank else b""
    head += method + b" " + target + b" " + version + b"\r\n"
    head += b"".join(name + b":" + value + b"\r\n" for name, value in fields) + b"\r\n"
    if head.count(b"\r\n\r\n") != 1 or b"\n" in head.replace(b"\r\n", b""):
        return  # not one complete head as find_head_end delimits it
    rules = RequestRules(limit_request_fields=fields_limit, limit_request_field_size=field_size)
    assert_same(head, rules, trusted)
