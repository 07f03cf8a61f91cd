"""Unit tests of gunicorn_fdpass.http.request_head: h11 parses the client's bytes, with
Gunicorn's rules on the raw bytes before it and on its Request event after."""

from __future__ import annotations

import h11
import pytest

from gunicorn_fdpass.http.request_head import parse_head, receive_head
from gunicorn_fdpass.http.request_rules import Rejected, RequestRules


class RecordingConnection(h11.Connection):
    """An h11 connection that records every byte it is given."""

    def __init__(self) -> None:
        super().__init__(h11.SERVER)
        self.fed = bytearray()

    def receive_data(self, data: bytes) -> None:
        self.fed += data
        super().receive_data(data)


def refused(head: bytes, **rules: object) -> int:
    with pytest.raises(Rejected) as info:
        parse_head(head, RequestRules(**rules), trusted=False)  # type: ignore[arg-type]
    return info.value.status_hint


def test_h11_is_given_the_clients_head_as_sent() -> None:
    head = (b"POST /a?b=1 HTTP/1.1\r\nHost: example.com\r\nX-Odd:  spaced\t \r\n"
            b"content-length: 3\r\nCookie: a=1; b=2\r\n\r\n")
    conn = RecordingConnection()
    request = parse_head(head, RequestRules(), trusted=False, conn=conn)
    assert bytes(conn.fed) == head  # no regenerated head, no placeholder Host
    assert request.content_length == 3
    assert ("X-ODD", "spaced") in request.headers and ("HOST", "example.com") in request.headers


def test_one_leading_empty_line_is_not_given_to_h11() -> None:
    conn = RecordingConnection()
    parse_head(b"\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n", RequestRules(), trusted=False,
               conn=conn)
    assert bytes(conn.fed) == b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"


@pytest.mark.parametrize(
    ("field", "status"),
    [
        # h11 would merge these into one Content-Length of 5.
        (b"Content-Length: 5, 5", 400),
        (b"Content-Length: 5\r\nContent-Length: 5", 400),
        # h11 would answer 501 to these; Gunicorn answers 400.
        (b"Transfer-Encoding: identity", 400),
        (b"Transfer-Encoding: chunked, gzip", 400),
        (b"Transfer-Encoding: chunked\r\nContent-Length: 5", 400),
        # h11 lets these control characters through in a value.
        (b"X: a\x01b", 400),
        (b"X: a\x7fb", 400),
        (b"X: a\rb", 400),
        # h11 joins folded lines.
        (b"X: a\r\n b", 400),
    ],
)
def test_raw_checks_refuse_what_h11_would_normalise(field: bytes, status: int) -> None:
    assert refused(b"POST / HTTP/1.1\r\nHost: t\r\n" + field + b"\r\n\r\n") == status


def test_transfer_encoding_reaches_the_application_as_sent() -> None:
    request, body = receive_head(
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: Chunked \r\n\r\n",
        RequestRules(), trusted=False)
    assert request.chunked and ("TRANSFER-ENCODING", "Chunked") in request.headers
    assert body.chunked


def test_what_h11_refuses_is_answered_with_its_status() -> None:
    # Gunicorn serves a transfer coding before chunked; h11 takes only "chunked".
    assert refused(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n") == 501
    # A header line h11 cannot parse.
    assert refused(b"GET / HTTP/1.1\r\nHost: t\r\nA : 1\r\n\r\n") == 400


def test_strip_header_spaces_removes_them_before_h11() -> None:
    conn = RecordingConnection()
    request = parse_head(b"GET / HTTP/1.1\r\nHost: t\r\nA \t: 1\r\n\r\n",
                         RequestRules(strip_header_spaces=True), trusted=False, conn=conn)
    assert ("A", "1") in request.headers
    assert bytes(conn.fed) == b"GET / HTTP/1.1\r\nHost: t\r\nA: 1\r\n\r\n"


def test_folded_framing_field_is_read_as_gunicorn_joins_it() -> None:
    request = parse_head(
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding:\r\n chunked\r\n\r\n",
        RequestRules(permit_obsolete_folding=True), trusted=False)
    assert request.chunked


def test_a_folded_field_counts_its_continuation_lines_toward_the_size_limit() -> None:
    head = b"GET / HTTP/1.1\r\nHost: t\r\nX: " + b"a" * 10 + b"\r\n " + b"b" * 10 + b"\r\n\r\n"
    assert refused(head, permit_obsolete_folding=True, limit_request_field_size=20) == 431


@pytest.mark.parametrize("target", [b"/a\x7fb", b"/caf\xc3\xa9", b"/a\x01", b"/a\tb", b"/\x80"])
def test_a_target_that_is_not_printable_ascii_is_a_400(target: bytes) -> None:
    # h11's request-target rule (VCHAR+) refuses it: parse_head does not scan it again.
    assert refused(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n") == 400
