"""HTTP/1.1 conformance of the worker side: Gunicorn's settings and compatibility flags,
proxies (forwarded_allow_ips, secure_scheme_headers, forwarder_headers, PROXY protocol),
chunked body buffering, and the response side."""

from __future__ import annotations

import dataclasses
import socket
import struct
import threading
from typing import Any

import pytest

from gunicorn_fdpass.http import proxy_protocol
from gunicorn_fdpass.http.request_head import parse_head, receive_head
from gunicorn_fdpass.http.request_rules import AddressAllowList, Rejected, RequestRules
from gunicorn_fdpass.worker.api import Closed, Idle
from gunicorn_fdpass.worker.connection import serve_connection
from tests.support.serve import FakeHooks, FakeLog, StartResponse, make_config, one, serve

pytestmark = pytest.mark.timeout(10)

HOST = b"Host: t\r\n"


class EnvironApp:
    """Records each environ (with the body it read) and answers 200 "ok"."""

    def __init__(self) -> None:
        self.environs: list[dict[str, Any]] = []

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        environ["body"] = environ["wsgi.input"].read()
        self.environs.append(environ)
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]


def rules(**kw: Any) -> RequestRules:
    return RequestRules(**kw)


def status_of(request: bytes, **config: Any) -> tuple[int, EnvironApp]:
    app = EnvironApp()
    out = serve(app, request, client_eof=True, **config)
    return one(out.raw).status, app


# --------------------------------------------------------------- limits and compat flags


LONG_LINE = b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n" + HOST + b"\r\n"


def with_fields(*fields: bytes) -> bytes:
    return b"GET / HTTP/1.1\r\n" + HOST + b"".join(f + b"\r\n" for f in fields) + b"\r\n"


@pytest.mark.parametrize(
    ("settings", "request_bytes", "status"),
    [
        ({"limit_request_line": 20}, b"GET /" + b"a" * 20 + b" HTTP/1.1\r\n" + HOST + b"\r\n", 414),
        ({"limit_request_line": 0}, LONG_LINE, 200),
        ({"limit_request_line": 100000}, LONG_LINE, 414),  # capped at 8190 like Gunicorn
        ({"limit_request_fields": 2}, with_fields(b"A: 1", b"B: 2"), 431),
        ({"limit_request_fields": 2}, with_fields(b"A: 1"), 200),
        ({"limit_request_field_size": 20}, with_fields(b"A: " + b"1" * 20), 431),
        ({"limit_request_field_size": 20}, with_fields(b"A: " + b"1" * 15), 200),
        ({}, b"get / HTTP/1.1\r\n" + HOST + b"\r\n", 400),
        ({"permit_unconventional_http_method": True}, b"get / HTTP/1.1\r\n" + HOST + b"\r\n", 200),
        ({"permit_unconventional_http_method": True}, b"G / HTTP/1.1\r\n" + HOST + b"\r\n", 200),
        ({"permit_unconventional_http_version": True},
         b"GET / HTTP/2.0\r\n" + HOST + b"\r\n", 200),
        ({}, b"GET / HTTP/1.1\r\n" + HOST + b"A: 1\r\n 2\r\n\r\n", 400),
        ({"permit_obsolete_folding": True}, with_fields(b"A: 1", b" 2"), 200),
        ({}, b"GET / HTTP/1.1\r\n" + HOST + b"A : 1\r\n\r\n", 400),
        ({"strip_header_spaces": True}, b"GET / HTTP/1.1\r\n" + HOST + b"A : 1\r\n\r\n", 200),
        ({"header_map": "refuse"}, b"GET / HTTP/1.1\r\n" + HOST + b"A_B: 1\r\n\r\n", 400),
    ],
)
def test_settings_change_the_verdict(
    settings: dict[str, Any], request_bytes: bytes, status: int
) -> None:
    got, app = status_of(request_bytes, rules=rules(**settings))
    assert got == status
    assert len(app.environs) == (1 if status == 200 else 0)


def test_casefold_and_folding_values() -> None:
    r = rules(permit_unconventional_http_method=True, casefold_http_method=True,
              permit_obsolete_folding=True)
    parsed = parse_head(b"get / HTTP/1.1\r\nHost: t\r\nA: 1\r\n\t 2 \r\n\r\n", r, trusted=False)
    assert parsed.method == "GET"
    assert ("A", "1 2") in parsed.headers


@pytest.mark.parametrize("mode", ["drop", "dangerous"])
def test_header_map_drop_and_dangerous(mode: str) -> None:
    request = b"GET / HTTP/1.1\r\n" + HOST + b"X-A: real\r\nX_A: spoof\r\n\r\n"
    _, app = status_of(request, rules=rules(header_map=mode))
    expected = "real" if mode == "drop" else "real,spoof"
    assert app.environs[0]["HTTP_X_A"] == expected


def test_refused_request_hides_pipelined_requests_and_logs_warning() -> None:
    app = EnvironApp()
    bad = b"GET / HTTP/1.1\r\n" + HOST + b"Content-Length: 1, 1\r\n\r\nx"
    out = serve(app, bad + b"GET /2 HTTP/1.1\r\n" + HOST + b"\r\n", client_eof=True)
    assert one(out.raw).status == 400 and app.environs == []
    assert out.result == Closed()
    assert any("Invalid request" in m for m in out.log.at("warning"))


def test_head_arriving_byte_by_byte_is_parsed() -> None:
    app = EnvironApp()
    request = b"GET /slow HTTP/1.1\r\n" + HOST + b"X: y\r\n\r\n"

    def client(sock: socket.socket) -> None:
        for i in range(len(request)):
            sock.sendall(request[i : i + 1])
        sock.shutdown(socket.SHUT_WR)

    out = serve(app, client=client)
    assert one(out.raw).status == 200 and app.environs[0]["PATH_INFO"] == "/slow"


# --------------------------------------------------------- forwarded_allow_ips & friends


def _trusted(trust: bool) -> RequestRules:
    return rules(forwarded_allow=AddressAllowList(["*"] if trust else ["10.9.9.9"]))


def tcp_serve(request: bytes, **config: Any) -> tuple[bytes, EnvironApp, Closed | Idle]:
    """Serve over real TCP loopback (peer 127.0.0.1), so IP allow lists apply."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = socket.create_connection(listener.getsockname())
    conn, _ = listener.accept()
    listener.close()
    client.sendall(request)
    client.shutdown(socket.SHUT_WR)
    received = bytearray()

    def reader() -> None:
        while data := client.recv(65536):
            received.extend(data)

    thread = threading.Thread(target=reader)
    thread.start()
    app = EnvironApp()
    try:
        result = serve_connection(conn, b"", app, make_config(**config), FakeHooks(), FakeLog())
    finally:
        conn.close()
    thread.join(5)
    client.close()
    return bytes(received), app, result


@pytest.mark.parametrize("trust", [True, False])
def test_secure_scheme_headers_only_from_trusted_peers(trust: bool) -> None:
    request = b"GET / HTTP/1.1\r\n" + HOST + b"X-Forwarded-Proto: https\r\n\r\n"
    raw, app, _ = tcp_serve(request, rules=_trusted(trust))
    assert one(raw).status == 200
    assert app.environs[0]["wsgi.url_scheme"] == ("https" if trust else "http")


@pytest.mark.parametrize("trust", [True, False])
def test_forwarder_headers_only_from_trusted_peers(trust: bool) -> None:
    request = b"GET /app/x HTTP/1.1\r\n" + HOST + b"SCRIPT_NAME: /app\r\nREMOTE_USER: bob\r\n\r\n"
    r = dataclasses.replace(_trusted(trust), forwarder_headers=frozenset({"SCRIPT_NAME",
                                                                          "REMOTE_USER"}))
    _, app, _ = tcp_serve(request, rules=r)
    env = app.environs[0]
    if trust:
        assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/app", "/x")
        assert env["HTTP_REMOTE_USER"] == "bob"
    else:  # header_map = drop: the underscore names vanish
        assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("", "/app/x")
        assert "HTTP_REMOTE_USER" not in env


def test_contradictory_scheme_headers_refused_only_when_trusted() -> None:
    request = with_fields(b"X-Forwarded-Proto: https", b"X-Forwarded-Ssl: no")
    assert one(tcp_serve(request, rules=_trusted(True))[0]).status == 400
    assert one(tcp_serve(request, rules=_trusted(False))[0]).status == 200


# ------------------------------------------------------------------------ PROXY protocol

V1 = b"PROXY TCP4 203.0.113.7 192.0.2.1 40000 443\r\n"


def v2(family: int = 0x11, addresses: bytes | None = None, command: int = 0x21) -> bytes:
    if addresses is None:
        addresses = bytes([203, 0, 113, 8, 192, 0, 2, 1]) + struct.pack(">HH", 40001, 443)
    return proxy_protocol.V2_SIGNATURE + bytes([command, family]) + struct.pack(
        ">H", len(addresses)) + addresses


GET = b"GET / HTTP/1.1\r\n" + HOST + b"\r\n"


@pytest.mark.parametrize(
    ("mode", "header", "addr"),
    [
        ("v1", V1, "203.0.113.7"),
        ("auto", V1, "203.0.113.7"),
        ("v2", v2(), "203.0.113.8"),
        ("auto", v2(), "203.0.113.8"),
        ("auto", v2(0x21, bytes(15) + b"\x01" + bytes(15) + b"\x02" + b"\x00\x01\x00\x02"), "::1"),
        ("auto", b"", "127.0.0.1"),  # optional in every mode, as in Gunicorn
    ],
)
def test_proxy_header_sets_remote_addr(mode: str, header: bytes, addr: str) -> None:
    raw, app, _ = tcp_serve(header + GET, proxy_protocol=mode)
    assert one(raw).status == 200
    assert app.environs[0]["REMOTE_ADDR"] == addr
    if header:
        assert app.environs[0]["PROXY_PROTOCOL"] in ("TCP4", "TCP6")


@pytest.mark.parametrize(
    ("mode", "header", "status"),
    [
        ("v1", b"PROXY TCP4 1.2.3 4.5.6.7 1 2\r\n", 400),
        ("v1", b"PROXY UNKNOWN\r\n", 400),
        ("v1", b"PROXY TCP4 1.2.3.4 4.5.6.7 1 99999\r\n", 400),
        ("v1", b"PROXY TCP6 1.2.3.4 4.5.6.7 1 2\r\n", 400),
        ("v2", v2(command=0x23), 400),
        ("v2", v2(family=0x12), 400),  # UDP
        ("v2", v2(addresses=b"\x01\x02"), 400),
        ("v1", v2(), 400),  # v2 when only v1 is accepted: not HTTP either
        ("v2", V1, 400),
    ],
)
def test_bad_proxy_headers_are_refused(mode: str, header: bytes, status: int) -> None:
    raw, app, _ = tcp_serve(header + GET, proxy_protocol=mode)
    assert one(raw).status == status
    assert app.environs == []


def test_proxy_header_from_peer_not_allowed_gets_403() -> None:
    raw, app, _ = tcp_serve(V1 + GET, proxy_protocol="auto",
                            proxy_allow=AddressAllowList(["10.0.0.0/8"]))
    assert one(raw).status == 403 and app.environs == []


def test_proxy_info_survives_parking_and_only_our_marker_is_trusted() -> None:
    # First handoff: the PROXY header is read; the idle connection carries a resume marker.
    app = EnvironApp()
    out = serve(app, V1 + GET, proxy_protocol="v1")
    assert isinstance(out.result, Idle)
    assert out.result.leftover.startswith(b"PROXY FDPASS-")
    # Next handoff (maybe another worker): the marker restores what the header said.
    again = serve(app, GET, prefix=out.result.leftover, proxy_protocol="v1")
    assert one(again.raw).status == 200
    assert app.environs[-1]["REMOTE_ADDR"] == "203.0.113.7"
    # A client cannot forge a marker: without the secret it is just a bad PROXY line.
    forged = b"PROXY FDPASS-0000 TCP4 6.6.6.6 - 1 - 2\r\n"
    assert one(serve(app, forged + GET, proxy_protocol="v1", client_eof=True).raw).status == 400


def test_no_second_proxy_header_after_parking() -> None:
    app = EnvironApp()
    out = serve(app, GET, proxy_protocol="auto")
    assert isinstance(out.result, Idle)
    again = serve(app, V1 + GET, prefix=out.result.leftover, proxy_protocol="auto",
                  client_eof=True)
    assert one(again.raw).status == 400  # "PROXY ..." is now just a bad request line


def test_proxy_parse_needs_more_and_rejects() -> None:
    assert proxy_protocol.parse(b"PROXY TCP4 1.2", "v1", True) is proxy_protocol.NEED_DATA
    assert proxy_protocol.parse(V1[:8], "auto", True) is proxy_protocol.NEED_DATA
    assert proxy_protocol.parse(b"GET / HTTP/1.1\r\n", "auto", True) is proxy_protocol.NOT_PROXY
    with pytest.raises(Rejected) as info:
        proxy_protocol.parse(V1, "v1", False)
    assert info.value.status_hint == 403


# ------------------------------------------------------------------ chunked body buffering

CHUNKED = b"POST /up HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n"


def chunks(body: bytes, size: int = 1000) -> bytes:
    out = b"".join(b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size])
                   for i in range(0, len(body), size))
    return out + b"0\r\n\r\n"


def test_chunked_body_is_buffered_with_content_length() -> None:
    body = bytes(range(256)) * 40
    _, app = status_of(CHUNKED + chunks(body))
    env = app.environs[0]
    assert env["body"] == body
    assert env["CONTENT_LENGTH"] == str(len(body))
    assert "HTTP_TRANSFER_ENCODING" not in env


def test_large_chunked_body_spools_to_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    from gunicorn_fdpass.worker import body_reader

    monkeypatch.setattr(body_reader, "_SPOOL_IN_MEMORY", 1024)
    seen: list[bool] = []

    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        seen.append(bool(getattr(environ["wsgi.input"], "_rolled", False)))
        data = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Length", str(len(data)))])
        return [data]

    body = b"z" * 5000
    out = serve(app, CHUNKED + chunks(body), client_eof=True)
    assert one(out.raw).body == body and seen == [True]


def test_chunked_body_over_limit_gets_413_and_never_reaches_app() -> None:
    status, app = status_of(CHUNKED + chunks(b"x" * 5000), max_chunked_body=4096)
    assert status == 413 and app.environs == []


def test_chunked_streaming_when_buffering_disabled() -> None:
    _, app = status_of(CHUNKED + chunks(b"abc"), max_chunked_body=0)
    env = app.environs[0]
    assert env["body"] == b"abc" and "CONTENT_LENGTH" not in env
    assert env["wsgi.input_terminated"] is True


def test_chunked_buffering_sends_100_continue_first() -> None:
    app = EnvironApp()
    request = CHUNKED.replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n")

    def client(sock: socket.socket) -> None:
        sock.sendall(request)
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(chunks(b"hi"))
        sock.shutdown(socket.SHUT_WR)

    out = serve(app, client=client)
    assert one(out.raw).status == 200 and app.environs[0]["body"] == b"hi"


# ---------------------------------------------------------------------------- responses


def test_head_never_carries_a_body_even_streamed() -> None:
    def app(environ: dict[str, Any], start_response: StartResponse) -> Any:
        start_response("200 OK", [])
        yield b"never sent"

    out = serve(app, b"HEAD / HTTP/1.1\r\n" + HOST + b"\r\n" + GET)
    assert b"never sent" not in out.raw.split(b"\r\n\r\n", 1)[1][:20]
    assert out.raw.count(b"HTTP/1.1 200") == 2


def test_client_gone_mid_stream_costs_only_that_response_and_close_runs() -> None:
    closed = threading.Event()

    class Stream:
        def __iter__(self) -> Any:
            for _ in range(10000):
                yield b"x" * 65536

        def close(self) -> None:
            closed.set()

    def app(environ: dict[str, Any], start_response: StartResponse) -> Any:
        start_response("200 OK", [])
        return Stream()

    def client(sock: socket.socket) -> None:
        sock.sendall(GET)
        sock.recv(1000)
        sock.close()  # goes away while the server is blocked in send (back-pressure)

    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    thread = threading.Thread(target=client, args=(b,))
    thread.start()
    try:
        result = serve_connection(a, b"", app, make_config(), FakeHooks(), FakeLog())
    finally:
        a.close()
    thread.join(5)
    assert result == Closed() and closed.is_set()


# ------------------------------------------- chunked bodies: h11 frames, Gunicorn's rules


CHUNKED_CASES = [
    (b"5\r\nhello\r\n0\r\n\r\n", b"hello"),
    (b'5;a=b\r\nhello\r\n3 ; q = "x y"\r\nabc\r\n0\r\nT: v\r\n\r\n', 400),  # BWS: h11
    (b'5;a=b\r\nhello\r\n3;q="x y";r\r\nabc\r\n0\r\nT: v\r\n\r\n', b"helloabc"),
    (b"0005\r\nhello\r\n000\r\n\r\n", b"hello"),
    (b"0" * 20 + b"5\r\nhello\r\n0\r\n\r\n", 400),  # h11: at most 20 hex digits
    (b"5 \r\nhello\r\n0\r\n\r\n", 400),
    (b"5\r\nhello\r\n3;=x\r\nabc\r\n0\r\n\r\n", 400),
    (b"5\r\nhello\r\n3;a\x01\r\nabc\r\n0\r\n\r\n", 400),
    (b"1;" + b"a" * 9000 + b"\r\nx\r\n0\r\n\r\n", 400),
    (b"5\r\nhello\r\n0\r\nT: v\nU: w\r\n\r\n", 400),
    (b"5\r\nhello\r\n0\r\n\n", 400),
    (b"5\r\nhello\r\n0\r\nT: v\r\n w\r\n\r\n", 400),
    (b"5\r\nhello\r\n0\r\nContent-Length: 5\r\n\r\n", 400),
    (b"5\r\nhello\r\n0;x=1\r\nT: v\r\nT: w\r\n\r\n", b"hello"),
    (b"5\nhello\n0\n\n", 400),
    (b"5\r\nhelloXX\r\n0\r\n\r\n", 400),
    (b"5\r\nhello\r\n0\r\nT: " + b"v" * 9000 + b"\r\n\r\n", 431),
]


@pytest.mark.parametrize("feed", [1, 2, 3, 7, 1 << 20])
@pytest.mark.parametrize(("body", "expected"), CHUNKED_CASES)
def test_chunked_rules_hold_however_the_bytes_arrive(
    body: bytes, expected: bytes | int, feed: int
) -> None:
    """h11 frames the body; the rules h11 does not apply are checked on exactly the lines it
    consumed, whatever the boundaries of the pieces it was given."""
    rule = rules()
    _, reader = receive_head(CHUNKED, rule, trusted=False)
    rest, got = body + b"GET / HTTP/1.1\r\n", bytearray()
    try:
        while (data := reader.next_data()) != b"":
            if data is None:
                assert rest, "h11 wants more than the whole body"
                take = min(feed, reader.wants())
                reader.receive(rest[:take])
                rest = rest[take:]
            else:
                got += data
    except Rejected as exc:
        assert exc.status_hint == expected, exc.reason
        return
    assert got == expected
    # What h11 read past the body is given back, in order, for the next request.
    assert reader.conn.trailing_data[0] + rest == b"GET / HTTP/1.1\r\n"


@pytest.mark.parametrize(("body", "expected"), CHUNKED_CASES[:5])
def test_chunked_rules_over_a_socket(body: bytes, expected: bytes | int) -> None:
    status, app = status_of(CHUNKED + body)
    if isinstance(expected, int):
        assert status == expected and app.environs == []
    else:
        assert status == 200 and app.environs[0]["body"] == expected


def test_chunked_request_then_pipelined_request() -> None:
    """Bytes h11 read past a chunked body go back to the validator for the next request."""
    app = EnvironApp()
    second = b"POST /2 HTTP/1.1\r\n" + HOST + b"Content-Length: 3\r\n\r\nxyz"
    out = serve(app, CHUNKED + chunks(b"abc") + second + b"GET /3 HTTP/1.1\r\n" + HOST + b"\r\n")
    assert isinstance(out.result, Idle) and out.result.leftover == b""
    assert [e["body"] for e in app.environs] == [b"abc", b"xyz", b""]
    assert [e["PATH_INFO"] for e in app.environs] == ["/up", "/2", "/3"]


def test_chunked_body_trickled_byte_by_byte() -> None:
    app = EnvironApp()
    request = CHUNKED + b"3;a=b\r\nabc\r\n2\r\nde\r\n0\r\nT: v\r\n\r\n"

    def client(sock: socket.socket) -> None:
        for i in range(len(request)):
            sock.sendall(request[i : i + 1])
        sock.shutdown(socket.SHUT_WR)

    out = serve(app, client=client)
    assert one(out.raw).status == 200 and app.environs[0]["body"] == b"abcde"


def test_take_header_consumes_a_proxy_header_and_says_when_more_is_needed() -> None:
    buf = bytearray(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nGET / HTTP/1.1\r\n")
    known, info = proxy_protocol.take_header(buf, "v1", True)
    assert known and info is not None and info.client_addr == "1.2.3.4"
    assert buf == b"GET / HTTP/1.1\r\n"  # the header is consumed, the request is not
    assert proxy_protocol.take_header(bytearray(b"PROXY TCP4 1.2"), "v1", True) == (False, None)
    plain = bytearray(b"GET / HTTP/1.1\r\n")
    assert proxy_protocol.take_header(plain, "v1", True) == (True, None)
    assert plain == b"GET / HTTP/1.1\r\n"
