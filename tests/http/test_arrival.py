"""What the first bytes of a connection mean in the master (http/arrival.classify): a table."""

from __future__ import annotations

import struct

import pytest

from gunicorn_fdpass.http import proxy_protocol
from gunicorn_fdpass.http.arrival import ArrivalRules, Kind, Verdict, chunked_end, classify

HEAD = b"POST /form HTTP/1.1\r\nHost: t\r\n"
GET = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"
V1 = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
BODY = ArrivalRules(max_head=8192, body_buffer=1024)
PROXY = ArrivalRules(max_head=8192, body_buffer=1024, proxy_protocol="auto")
CLIENT_HELLO = bytes.fromhex("160301020001") + bytes(40)


def v2(command: int = 0x21, family: int = 0x11) -> bytes:
    addresses = bytes([10, 0, 0, 1, 10, 0, 0, 2]) + struct.pack(">HH", 1000, 80)
    return (proxy_protocol.V2_SIGNATURE + bytes([command, family])
            + struct.pack(">H", len(addresses)) + addresses)


def cl(n: int, sent: bytes) -> bytes:
    return HEAD + b"Content-Length: " + str(n).encode() + b"\r\n\r\n" + sent


CHUNKED = HEAD + b"Transfer-Encoding: chunked\r\n\r\n"

CASES: list[tuple[str, bytes, ArrivalRules, Kind, int]] = [
    # name, bytes, rules, kind, value
    ("nothing", b"", BODY, Kind.EMPTY, 0),
    ("a method begun", b"GE", BODY, Kind.PARTIAL, 0),
    ("a head begun", b"GET / HTTP/1.1\r\nHost:", BODY, Kind.PARTIAL, 0),
    ("a whole head, no body", GET, BODY, Kind.READY, 0),
    ("one leading CRLF is fine", b"\r\n" + GET, BODY, Kind.READY, 0),
    ("a lone leading CR", b"\r", BODY, Kind.PARTIAL, 0),
    ("a head longer than max_head", b"GET /" + b"a" * 9000, BODY, Kind.READY, 0),
    ("body buffering off", cl(10, b""), ArrivalRules(max_head=8192), Kind.READY, 0),
    ("Content-Length body on its way", cl(10, b"abc"), BODY, Kind.BODY, len(cl(10, b""))+10),
    ("Content-Length body complete", cl(3, b"abc"), BODY, Kind.READY, 0),
    ("Content-Length 0", cl(0, b""), BODY, Kind.READY, 0),
    ("a body over the bound is handed over", cl(1025, b""), BODY, Kind.READY, 0),
    ("a body exactly at the bound waits", cl(1024, b""), BODY, Kind.BODY, len(cl(1024, b""))+1024),
    ("lower-case field name", HEAD + b"content-length: 2\r\n\r\n", BODY, Kind.BODY,
     len(HEAD) + 23),
    ("Expect: 100-continue goes at once", HEAD + b"Expect: 100-continue\r\nContent-Length: 9"
     b"\r\n\r\n", BODY, Kind.READY, 0),
    ("two Content-Lengths: the worker refuses", HEAD + b"Content-Length: 2\r\n"
     b"Content-Length: 2\r\n\r\n", BODY, Kind.READY, 0),
    ("an invalid Content-Length: the worker refuses", HEAD + b"Content-Length: 2x\r\n\r\n",
     BODY, Kind.READY, 0),
    ("CL with TE: the worker refuses", HEAD + b"Content-Length: 2\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n", BODY, Kind.READY, 0),
    ("a coding before chunked: the worker decides", HEAD + b"Transfer-Encoding: gzip, chunked"
     b"\r\n\r\n", BODY, Kind.READY, 0),
    ("X-Content-Length is not framing", HEAD + b"X-Content-Length: 5\r\n\r\n", BODY,
     Kind.READY, 0),
    ("chunked, nothing yet", CHUNKED, BODY, Kind.BODY, 0),
    ("chunked, half a chunk", CHUNKED + b"5\r\nab", BODY, Kind.BODY, 0),
    ("chunked, no last chunk yet", CHUNKED + b"5\r\nabcde\r\n", BODY, Kind.BODY, 0),
    ("chunked, complete", CHUNKED + b"5;x=y\r\nabcde\r\n0\r\n\r\n", BODY, Kind.READY, 0),
    ("chunked, trailers pending", CHUNKED + b"0\r\nX-T: 1\r\n", BODY, Kind.BODY, 0),
    ("chunked, trailers complete", CHUNKED + b"0\r\nX-T: 1\r\n\r\n", BODY, Kind.READY, 0),
    ("chunked, a bad size: the worker refuses", CHUNKED + b"zz\r\n", BODY, Kind.READY, 0),
    ("chunked, a bare LF: the worker refuses", CHUNKED + b"5\nhello\n", BODY, Kind.READY, 0),
    ("chunked, a bare LF first", CHUNKED + b"\n", BODY, Kind.READY, 0),
    ("chunked, over the bound", CHUNKED + b"401\r\n", BODY, Kind.READY, 0),
    ("junk: a control byte", b"\x00\x01\x02", BODY, Kind.REFUSE, 400),
    ("junk: a method character that is not a token", b"GE(T / HTTP/1.1\r\n", BODY,
     Kind.REFUSE, 400),
    ("junk: no space after the method", b"GET\t/ HTTP/1.1\r\n", BODY, Kind.REFUSE, 400),
    ("junk: two empty lines first", b"\r\n\r\n", BODY, Kind.REFUSE, 400),
    ("junk: a bare CR first", b"\rX", BODY, Kind.REFUSE, 400),
    ("a TLS ClientHello on a plain port", CLIENT_HELLO, BODY, Kind.TLS, 400),
    ("one TLS byte is enough", b"\x16", BODY, Kind.TLS, 400),
    ("TLS listener: record incomplete", CLIENT_HELLO, ArrivalRules(tls=True), Kind.PARTIAL, 0),
    ("TLS listener: record complete", bytes.fromhex("1603010002") + b"ab",
     ArrivalRules(tls=True), Kind.READY, 0),
    ("TLS listener: not TLS at all goes to the worker", b"GET", ArrivalRules(tls=True),
     Kind.READY, 0),
    # PROXY protocol (Gunicorn's vectors pp_01, pp_02, and a v2 header with a bad command).
    ("pp_01: malformed v1 address", b"PROXY TCP4 192.168.0.1 192.16...\r\n", PROXY,
     Kind.REFUSE, 400),
    ("pp_02: invalid v1 ports", b"PROXY TCP4 192.168.0.1 192.168.0.11 65iii 100000\r\n",
     PROXY, Kind.REFUSE, 400),
    ("v2 with an unknown command", v2(command=0x23) + GET, PROXY, Kind.REFUSE, 400),
    ("v1 line not all there", V1[:20], PROXY, Kind.PARTIAL, 0),
    ("v1 line, no request yet", V1, PROXY, Kind.PARTIAL, 0),
    ("valid pp_02: v1 line then a request with its body", V1 + cl(3, b"abc") + GET, PROXY,
     Kind.READY, 0),
    ("v1 line then a body on its way", V1 + cl(5, b"a"), PROXY, Kind.BODY,
     len(V1) + len(cl(5, b"")) + 5),
    ("v2 header then a request", v2() + GET, PROXY, Kind.READY, 0),
    ("v2 signature begun", proxy_protocol.V2_SIGNATURE[:5], PROXY, Kind.PARTIAL, 0),
    ("no header: optional, as in Gunicorn", GET, PROXY, Kind.READY, 0),
    ("junk after a v1 line", V1 + b"\x00", PROXY, Kind.REFUSE, 400),
    ("proxy off: a PROXY line is a request line", V1, BODY, Kind.PARTIAL, 0),
    ("our resume marker is read as a header", proxy_protocol.resume_marker(None) + GET,
     PROXY, Kind.READY, 0),
]


@pytest.mark.parametrize(("data", "rules", "kind", "value"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_classify(data: bytes, rules: ArrivalRules, kind: Kind, value: int) -> None:
    # The bytes past ``length`` (the rest of the master's peek buffer) count for nothing.
    verdict = classify(bytearray(data) + b"\xff" * 64, len(data), rules)
    assert (verdict.kind, verdict.value) == (kind, value)
    if kind in (Kind.REFUSE, Kind.TLS):
        assert verdict.reason


def test_proxy_header_from_a_peer_not_allowed_is_refused_403() -> None:
    verdict = classify(V1 + GET, len(V1 + GET), PROXY, peer_allowed=False)
    assert verdict == Verdict(Kind.REFUSE, 403, verdict.reason) and "proxy_allow_ips" in (
        verdict.reason)
    # Without a header the peer does not matter.
    assert classify(GET, len(GET), PROXY, peer_allowed=False).kind is Kind.READY


def test_a_body_arriving_byte_by_byte_is_ready_exactly_when_complete() -> None:
    for request in (cl(40, b"x" * 40), CHUNKED + b"a\r\n0123456789\r\n14\r\n" + b"y" * 20
                    + b"\r\n0\r\n\r\n"):
        kinds = [classify(request, n, BODY).kind for n in range(1, len(request) + 1)]
        assert kinds[-1] is Kind.READY
        assert Kind.READY not in kinds[:-1]
        head_end = request.index(b"\r\n\r\n") + 4
        assert set(kinds[head_end - 1:-1]) == {Kind.BODY}


def test_chunked_end_reports_where_the_body_ends() -> None:
    body = b"3\r\nabc\r\n0\r\n\r\nNEXT"
    assert chunked_end(body, 0, len(body), 100) == len(body) - 4
    assert chunked_end(body, 0, 5, 100) == -1
    assert chunked_end(b"3\r\nabcXY0\r\n\r\n", 0, 13, 100) == -2  # no CRLF after the data
    assert chunked_end(b"f" * 5000, 0, 5000, 100) == -2  # an endless size line
