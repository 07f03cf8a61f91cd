"""A request without a body is parsed by h11's own head reader, without an h11 connection
around it (gunicorn_fdpass/http/request_head.py, _h11_event): every head gets exactly the
answer it gets through an h11 connection's next_event, the same request or the same refusal.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h11
import pytest
from hypothesis import HealthCheck, given, settings

from gunicorn_fdpass.http import request_head
from gunicorn_fdpass.http.request_head import new_parser, parse_head, receive_head
from gunicorn_fdpass.http.request_rules import Rejected, RequestRules, find_head_end
from tests.http.test_fuzz_requests import SEEDS, mutated

CORPUS = Path(__file__).parent / "corpus"
RULES = [
    RequestRules(),
    RequestRules(permit_obsolete_folding=True, strip_header_spaces=True,
                 casefold_http_method=True, permit_unconventional_http_method=True,
                 permit_unconventional_http_version=True, header_map="dangerous"),
    RequestRules(limit_request_fields=3, limit_request_field_size=40),
]


def test_this_h11_has_the_head_reader() -> None:
    """Else every comparison below would compare the connection with itself."""
    assert request_head._H11_HEAD_READER is not None


def answer(head: bytes, rules: RequestRules, *, through_connection: bool) -> Any:
    conn = new_parser(rules) if through_connection else None
    try:
        return parse_head(head, rules, trusted=True, conn=conn)
    except Rejected as exc:
        return exc.status_hint, exc.reason


def heads(data: bytes, rules: RequestRules) -> list[bytes]:
    try:
        end = find_head_end(data, rules)
    except Rejected:
        return []
    return [data[:end]] if end > 0 else []


def same_answer(data: bytes) -> None:
    for rules in RULES:
        for head in heads(data, rules):
            assert answer(head, rules, through_connection=False) == answer(
                head, rules, through_connection=True), head


@pytest.mark.parametrize("name", sorted(json.loads((CORPUS / "expected.json").read_text())))
def test_every_corpus_head_gets_the_same_answer(name: str) -> None:
    same_answer((CORPUS / name).read_bytes())


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_heads_get_the_same_answer(data: bytes) -> None:
    same_answer(data)


def test_a_body_is_read_through_a_connection_and_an_empty_one_needs_none() -> None:
    rules = RequestRules()
    _, empty = receive_head(SEEDS[0], rules, trusted=False)
    assert empty.conn is None and empty.done and empty.trailing() == b""
    head = SEEDS[2][: SEEDS[2].index(b"\r\n\r\n") + 4]
    request, body = receive_head(head, rules, trusted=False)
    assert isinstance(body.conn, h11.Connection) and request.content_length == 5
    assert body.next_data() is None
    body.receive(b"hello")
    assert body.next_data() == b"hello" and body.next_data() == b""


def test_without_the_head_reader_every_head_goes_through_a_connection(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(request_head, "_H11_HEAD_READER", None)
    rules = RequestRules()
    request, body = receive_head(SEEDS[0], rules, trusted=False)
    assert isinstance(body.conn, h11.Connection) and request.path == "/"
    assert body.done and body.trailing() == b""
    with pytest.raises(Rejected) as info:
        receive_head(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n", rules,
                     trusted=False)
    assert info.value.status_hint == 400
