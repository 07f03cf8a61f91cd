"""The fast paths of reading a request head decide exactly as the rules they stand in for:
the raw header-section check on a plainly clean block, the request line's common methods and
versions, and the field names apply_fields remembers."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gunicorn_fdpass.http import fields
from gunicorn_fdpass.http.fields import apply_fields
from gunicorn_fdpass.http.request_head import (
    _check_raw_block,
    _check_raw_block_closely,
    parse_head,
)
from gunicorn_fdpass.http.request_rules import ParsedRequest, Rejected, RequestRules

# Bytes that matter to the raw checks, and ordinary ones.
_PIECES = st.sampled_from([b"a", b"Host", b":", b" ", b"\t", b"\r\n", b"\r", b"\n", b"\x00",
                           b"\x7f", b"\x80", b"\xff", b"x" * 30, b"\r\n ", b"\r\n\t"])


def outcome(check: Any, block: bytes, rules: RequestRules) -> tuple[int, str] | None:
    try:
        check(block, rules)
    except Rejected as exc:
        return exc.status_hint, exc.reason
    return None


# Mostly well-formed blocks (lines ending with CRLF, each made of a few pieces), and any.
_LINES = st.lists(st.lists(_PIECES, max_size=5).map(b"".join), max_size=4).map(
    lambda lines: b"".join(line + b"\r\n" for line in lines))
_BLOCKS = st.one_of(_LINES, st.lists(_PIECES, max_size=12).map(b"".join))


@settings(max_examples=1000, deadline=None)
@given(_BLOCKS, st.sampled_from([8190, 20]), st.booleans())
def test_raw_block_check_answers_as_the_checks_one_by_one(
        block: bytes, size: int, folding: bool) -> None:
    rules = RequestRules(limit_request_field_size=size, permit_obsolete_folding=folding)
    assert outcome(_check_raw_block, block, rules) == outcome(
        _check_raw_block_closely, block, rules)


@pytest.mark.parametrize("block", [
    b"", b"Host: a\r\n", b"Host: a\r\nX: \t\x80v\r\n", b"X: " + b"v" * 40 + b"\r\n",
])
def test_clean_blocks_pass_and_a_long_line_is_still_431(block: bytes) -> None:
    assert outcome(_check_raw_block, block, RequestRules()) is None
    expected = (431, "header field too large") if len(block) > 22 else None
    assert outcome(_check_raw_block, block, RequestRules(limit_request_field_size=20)) == (
        expected)


@pytest.mark.parametrize("method", [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "PROPFIND"])
@pytest.mark.parametrize("version", ["1.0", "1.1"])
@pytest.mark.parametrize("casefold", [False, True])
def test_common_methods_and_versions_as_the_rules_read_them(
        method: str, version: str, casefold: bool) -> None:
    target = "host:443" if method == "CONNECT" else "/p?q#f"
    head = f"{method} {target} HTTP/{version}\r\nHost: h\r\n\r\n".encode()
    request = parse_head(head, RequestRules(casefold_http_method=casefold), trusted=False)
    assert request.method == method and request.version == (1, int(version[2]))
    assert request.must_close is (method == "CONNECT")
    if method != "CONNECT":
        assert (request.path, request.query, request.fragment) == ("/p", "q", "f")


def test_a_target_without_query_is_its_own_path_and_odd_methods_keep_their_rules() -> None:
    request = parse_head(b"GET /a/b HTTP/1.1\r\nHost: h\r\n\r\n", RequestRules(), trusted=False)
    assert (request.target, request.path, request.query) == ("/a/b", "/a/b", "")
    with pytest.raises(Rejected):
        parse_head(b"get / HTTP/1.1\r\nHost: h\r\n\r\n", RequestRules(), trusted=False)
    folded = parse_head(b"get / HTTP/1.1\r\nHost: h\r\n\r\n",
                        RequestRules(permit_unconventional_http_method=True,
                                     casefold_http_method=True), trusted=False)
    assert folded.method == "GET"


_PAIRS = [(b"Host", b"h"), (b"x-a", b"1"), (b"X-A", b"2"), (b"X_Under", b"u"),
          (b"Expect", b"100-continue"), (b"SCRIPT_NAME", b"/m"), (b"X-Forwarded-Proto", b"https"),
          (b"content-type", b"t")]


def applied(pairs: list[tuple[bytes, bytes]], rules: RequestRules, trusted: bool,
            trailer: bool) -> Any:
    request = ParsedRequest("GET", "/", "/", "", "", (1, 1), [])
    try:
        kept = apply_fields(pairs, request, rules, trusted=trusted, trailer=trailer)
    except Rejected as exc:
        return exc.status_hint, exc.reason
    return kept, request


@pytest.mark.parametrize("header_map", ["refuse", "drop", "dangerous"])
@pytest.mark.parametrize("trusted", [False, True])
@pytest.mark.parametrize("trailer", [False, True])
def test_remembered_field_names_change_no_decision(
        header_map: str, trusted: bool, trailer: bool) -> None:
    """The same fields, first with nothing remembered, then with every name remembered
    (from other rules, trust and sections too): the same fields kept, or the same refusal."""
    rules = RequestRules(header_map=header_map, forwarder_headers=frozenset({"SCRIPT_NAME"}))
    pairs = _PAIRS if not trailer else _PAIRS[1:4] + _PAIRS[7:]
    for subset in (pairs, [p for p in pairs if p[0] != b"X_Under"]):
        fields._NAMES.clear()
        cold = applied(subset, rules, trusted, trailer)
        for other in (not trusted, trusted):
            applied(_PAIRS, RequestRules(), other, not trailer)
        assert applied(subset, rules, trusted, trailer) == cold
