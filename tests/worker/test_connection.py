"""Unit tests of gunicorn_fdpass.worker.connection: serve_connection over a real socketpair."""

from __future__ import annotations

import datetime
import gc
import socket
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import h11
import pytest

from gunicorn_fdpass.worker.connection import (
    Closed,
    Idle,
    serve_connection,
)
from tests.support.serve import (
    FakeHooks,
    FakeLog,
    StartResponse,
    make_config,
    one,
    parse,
    serve,
)

pytestmark = pytest.mark.timeout(10)


# ------------------------------------------------------------------------------- apps


def hello_app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    body = b"hello " + environ["PATH_INFO"].encode("latin-1")
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def echo_app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


def streaming_app(environ: dict[str, Any], start_response: StartResponse) -> Iterator[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"one,"
    yield b""  # must not end the chunked body
    yield b"two"


class TrackedIterable:
    """A response iterable that records close() and can fail on demand."""

    def __init__(self, chunks: list[bytes], fail_at: int | None = None) -> None:
        self.chunks = chunks
        self.fail_at = fail_at
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        for i, chunk in enumerate(self.chunks):
            if i == self.fail_at:
                raise RuntimeError("boom in iterable")
            yield chunk

    def close(self) -> None:
        self.closed = True


GET = b"GET /x HTTP/1.1\r\nHost: example.com\r\n\r\n"


# ------------------------------------------------------------------------------- tests


def test_simple_get_then_idle() -> None:
    out = serve(hello_app, GET)
    assert out.result == Idle(leftover=b"")
    resp = one(out.raw)
    assert resp.status == 200
    assert resp.body == b"hello /x"
    assert resp.headers["content-length"] == "8"
    assert resp.headers["server"] == "test-server/1"
    assert "date" in resp.headers
    assert "connection" not in resp.headers
    # head + single-item list body in a single send
    assert len(out.sends) == 1
    assert out.hooks.started == 1
    assert len(out.hooks.pre) == 1 and out.hooks.pre[0].path == "/x"
    assert len(out.hooks.post) == 1
    (resp_info, req_info, elapsed) = out.hooks.accessed[0]
    assert resp_info.status == "200 OK" and resp_info.status_code == 200 and resp_info.sent == 8
    assert req_info.method == "GET" and req_info.uri == "/x" and req_info.version == (1, 1)
    assert ("HOST", "example.com") in req_info.headers
    assert elapsed >= datetime.timedelta(0)


def test_prefix_is_parsed_first() -> None:
    out = serve(hello_app, GET[10:], prefix=GET[:10])
    assert out.result == Idle(leftover=b"")
    assert one(out.raw).body == b"hello /x"


def test_client_eof_after_request_closes() -> None:
    out = serve(hello_app, GET, client_eof=True)
    assert out.result == Closed()
    assert one(out.raw).body == b"hello /x"


def test_post_content_length() -> None:
    body = b"a" * 100_000
    req = b"POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n" + body
    out = serve(echo_app, client=lambda s: s.sendall(req))
    assert one(out.raw).body == body
    assert isinstance(out.result, Idle)


def test_chunked_post() -> None:
    req = (
        b"POST /e HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\n\r\n"
    )
    out = serve(echo_app, req)
    assert one(out.raw).body == b"hello world"
    assert out.result == Idle(leftover=b"")


@pytest.mark.parametrize(("app", "field", "value", "get_body"), [
    (hello_app, "content-length", "8", b"hello /x"),  # the app's Content-Length is kept
    (streaming_app, "transfer-encoding", "chunked", b"one,two"),  # announced like a GET's
])
def test_head_announces_the_get_framing_and_sends_no_body(
        app: Any, field: str, value: str, get_body: bytes) -> None:
    out = serve(app, b"HEAD /x HTTP/1.1\r\nHost: t\r\n\r\n" + GET)
    assert isinstance(out.result, Idle)
    responses, rest = parse(out.raw, ["HEAD", "GET"])
    assert rest == b""
    assert responses[0].headers[field] == value
    assert responses[0].body == b""
    assert responses[1].body == get_body
    assert out.hooks.accessed[0][0].sent == 0


@pytest.mark.parametrize("status", ["204 No Content", "304 Not Modified"])
def test_no_body_statuses(status: str) -> None:
    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        start_response(status, [("ETag", '"x"')])
        return [b"ignored"]

    out = serve(app, GET + GET)
    assert isinstance(out.result, Idle)
    head = out.raw.split(b"\r\n\r\n")[0].lower()
    assert b"transfer-encoding" not in head
    responses, rest = parse(out.raw, ["GET", "GET"])
    assert rest == b""
    assert [r.status for r in responses] == [int(status[:3])] * 2
    assert responses[0].body == b""


def test_204_drops_content_length() -> None:
    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        start_response("204 No Content", [("Content-Length", "0")])
        return []

    out = serve(app, GET)
    assert b"content-length" not in out.raw.lower()


def test_streaming_uses_chunked_and_skips_empty_chunks() -> None:
    out = serve(streaming_app, GET + GET)
    responses, rest = parse(out.raw, ["GET", "GET"])
    assert rest == b""
    assert responses[0].headers["transfer-encoding"] == "chunked"
    assert responses[0].body == responses[1].body == b"one,two"
    assert out.raw.count(b"0\r\n\r\n") == 2  # only the real terminators
    assert isinstance(out.result, Idle)


def test_expect_100_continue_sent_on_first_read() -> None:
    log: list[bytes] = []

    def client(s: socket.socket) -> None:
        s.sendall(
            b"POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        got = b""
        while b"\r\n\r\n" not in got:
            got += s.recv(1)
        log.append(got)
        s.sendall(b"hello")

    out = serve(echo_app, client=client)
    assert log[0].startswith(b"HTTP/1.1 100 ")
    assert one(out.raw).body == b"hello"
    assert isinstance(out.result, Idle)


def test_expect_100_continue_not_sent_when_body_unread() -> None:
    req = b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    out = serve(hello_app, req)
    assert b" 100 " not in out.raw
    resp = one(out.raw)
    assert resp.status == 200
    assert resp.headers["connection"] == "close"
    assert out.result == Closed()


def test_write_callable_data_comes_first() -> None:
    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        write = start_response("200 OK", [("Content-Length", "9")])
        write(b"abc")
        write(b"")
        write(b"def")
        return [b"ghi"]

    out = serve(app, GET)
    assert one(out.raw).body == b"abcdefghi"
    assert isinstance(out.result, Idle)


def test_app_exception_before_headers_gives_500() -> None:
    it = TrackedIterable([b"never"], fail_at=0)

    def app(environ: dict[str, Any], start_response: StartResponse) -> TrackedIterable:
        start_response("200 OK", [("Content-Length", "5")])
        return it

    out = serve(app, GET + GET)
    assert out.result == Closed()
    resp = one(out.raw)  # exactly one response: the second request is not served
    assert resp.status == 500
    assert resp.headers["connection"] == "close"
    assert it.closed
    assert any(m.startswith("Error handling request /x") for m in out.log.at("exception"))
    assert out.hooks.accessed[0][0].status_code == 500
    assert out.hooks.post[0][2].status_code == 500


def test_app_raising_immediately_gives_500() -> None:
    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        raise KeyError("nope")

    out = serve(app, GET)
    assert one(out.raw).status == 500
    assert out.result == Closed()


def test_exception_after_headers_aborts() -> None:
    it = TrackedIterable([b"first", b"second"], fail_at=1)

    class Streaming:  # not a list: each piece is sent as it comes
        def __iter__(self) -> Iterator[bytes]:
            return iter(it)

        def close(self) -> None:
            it.close()

    def app(environ: dict[str, Any], start_response: StartResponse) -> Streaming:
        start_response("200 OK", [])
        return Streaming()

    out = serve(app, GET + GET)
    assert out.result == Closed()
    assert it.closed
    assert out.raw.count(b"HTTP/1.1") == 1  # never a second response
    assert b"first" in out.raw
    assert not out.raw.endswith(b"0\r\n\r\n")  # chunked body left unterminated
    with pytest.raises(h11.RemoteProtocolError):
        parse(out.raw)
    assert out.log.at("exception")


def test_exc_info_after_headers_sent_reraises_and_aborts() -> None:
    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"partial"
        try:
            raise ValueError("late")
        except ValueError as exc:
            start_response("500 Oops", [], (type(exc), exc, exc.__traceback__))
        yield b"unreachable"

    out = serve(app, GET)
    assert out.result == Closed()
    assert b"unreachable" not in out.raw and b"Oops" not in out.raw


@pytest.mark.parametrize(
    ("declared", "chunks"),
    [(10, [b"short"]), (3, [b"toolong"]), (3, [b"abc", b"d"])],
)
def test_content_length_mismatch_closes(declared: int, chunks: list[bytes]) -> None:
    it = TrackedIterable(chunks)

    def app(environ: dict[str, Any], start_response: StartResponse) -> TrackedIterable:
        start_response("200 OK", [("Content-Length", str(declared))])
        return it

    out = serve(app, GET + GET)
    assert out.result == Closed()
    assert it.closed
    assert out.raw.count(b"HTTP/1.1 200") == 1
    body = out.raw.partition(b"\r\n\r\n")[2]
    # never more than declared (no desynchronisation), and the whole prefix that fits
    assert body == b"".join(chunks)[:declared]
    assert out.log.at("error") or out.log.at("warning")


def test_http10_close_delimited() -> None:
    out = serve(streaming_app, b"GET / HTTP/1.0\r\n\r\n")
    assert out.result == Closed()
    head = out.raw.split(b"\r\n\r\n")[0].lower()
    assert b"transfer-encoding" not in head and b"content-length" not in head
    assert out.raw.endswith(b"\r\n\r\none,two")


def test_http10_without_keepalive_closes() -> None:
    out = serve(hello_app, b"GET /a HTTP/1.0\r\n\r\n" + GET)
    assert out.result == Closed()
    assert out.raw.count(b"HTTP/1.1 200") == 1
    assert b"connection: close" in out.raw.lower()


def test_http10_keepalive_idle() -> None:
    req = b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    out = serve(hello_app, req + req + b"GET /partial HTTP/1.0\r\n")
    assert out.result == Idle(leftover=b"GET /partial HTTP/1.0\r\n")
    responses, rest = parse(out.raw, ["GET", "GET"])
    assert rest == b""
    assert [r.body for r in responses] == [b"hello /a", b"hello /a"]
    assert all(r.headers["connection"] == "keep-alive" for r in responses)


def test_http10_keepalive_streaming_falls_back_to_close() -> None:
    out = serve(streaming_app, b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert out.result == Closed()
    assert b"keep-alive" not in out.raw.lower()


def test_pipelined_requests_in_order_then_idle_with_partial() -> None:
    partial = b"GET /third HTTP/1.1\r\nHo"
    req = (
        b"GET /first HTTP/1.1\r\nHost: t\r\n\r\n"
        b"POST /second HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc" + partial
    )
    seen: list[str] = []

    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        seen.append(environ["PATH_INFO"])
        return hello_app(environ, start_response)  # does not read the POST body

    out = serve(app, req)
    assert out.result == Idle(leftover=partial)
    assert seen == ["/first", "/second"]
    responses, rest = parse(out.raw, ["GET", "GET"])
    assert rest == b""
    assert [r.body for r in responses] == [b"hello /first", b"hello /second"]
    assert out.hooks.started == 2


def test_burst_limit_hands_back_pipelined_requests() -> None:
    """After ``burst`` requests the connection goes back to the master, bytes and all."""
    third = b"GET /third HTTP/1.1\r\nHost: t\r\n\r\n"
    req = b"GET /first HTTP/1.1\r\nHost: t\r\n\r\nGET /second HTTP/1.1\r\nHost: t\r\n\r\n"
    out = serve(hello_app, req + third, burst=2)
    assert out.result == Idle(leftover=third)
    responses, rest = parse(out.raw, ["GET", "GET"])
    assert rest == b""
    assert [r.body for r in responses] == [b"hello /first", b"hello /second"]


def test_waiting_work_in_the_master_hands_the_connection_back_after_each_request() -> None:
    """First come, first served: while requests that arrived earlier wait for a worker, a
    pipelined next request goes back to the master behind them instead of being served."""
    second = b"GET /second HTTP/1.1\r\nHost: t\r\n\r\n"
    out = serve(hello_app, b"GET /first HTTP/1.1\r\nHost: t\r\n\r\n" + second,
                hooks=FakeHooks(waiting=True))
    assert out.result == Idle(leftover=second)
    assert one(out.raw).body == b"hello /first"


def test_http11_connection_close_request() -> None:
    out = serve(hello_app, b"GET /a HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" + GET)
    assert out.result == Closed()
    assert one(out.raw).headers["connection"] == "close"


def test_keepalive_disabled_closes_after_one() -> None:
    out = serve(hello_app, GET + GET, keepalive=False)
    assert out.result == Closed()
    assert one(out.raw).headers["connection"] == "close"


def test_request_started_close_answers_connection_close() -> None:
    out = serve(hello_app, GET + GET, hooks=FakeHooks(close_after=1))
    assert out.result == Closed()
    assert one(out.raw).headers["connection"] == "close"


def test_large_unread_body_closes() -> None:
    req = b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n"
    out = serve(hello_app, req + b"x" * 1000)
    assert out.result == Closed()
    assert one(out.raw).headers["connection"] == "close"


def test_small_unread_body_is_drained() -> None:
    req = b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n0123456789"
    out = serve(hello_app, req + GET)
    assert isinstance(out.result, Idle)
    responses, rest = parse(out.raw, ["POST", "GET"])
    assert rest == b"" and len(responses) == 2


def test_malformed_request_gives_400() -> None:
    out = serve(hello_app, b"GET / HTTP/1.1\r\nBad Header\r\n\r\n")
    assert out.result == Closed()
    resp = one(out.raw)
    assert resp.status == 400
    assert resp.headers["connection"] == "close"
    assert out.hooks.started == 0


def test_oversized_head_gives_431() -> None:
    req = b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"
    out = serve(hello_app, req)  # a field over limit_request_field_size (8190)
    assert out.result == Closed()
    assert one(out.raw).status == 431


def test_stalled_head_gives_408() -> None:
    out = serve(hello_app, b"GET / HTTP/1.1\r\nHost:", io_timeout=0.2)
    assert out.result == Closed()
    assert one(out.raw).status == 408


def test_stalled_idle_connection_closes_silently() -> None:
    out = serve(hello_app, b"", io_timeout=0.2)
    assert out.result == Closed()
    assert out.raw == b""


def test_stalled_body_closes() -> None:
    req = b"POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc"
    out = serve(echo_app, req, io_timeout=0.2)
    assert out.result == Closed()
    assert b"HTTP/1.1 200" not in out.raw
    assert not out.log.at("exception")  # a client problem, not an application error
    assert len(out.hooks.post) == 1  # post_request even so
    assert out.hooks.accessed == []  # but no response to log


def test_client_gone_before_response_logs_app_status() -> None:
    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        start_response("201 Created", [])
        return [b"late"]

    hooks = FakeHooks()
    log = FakeLog()
    a, b = socket.socketpair()
    b.sendall(GET)
    b.close()  # gone before the answer
    try:
        result = serve_connection(a, b"", app, make_config(), hooks, log)
    finally:
        a.close()
    assert result == Closed()
    assert not log.at("exception")
    (resp_info, _, _) = hooks.accessed[0]
    assert (resp_info.status_code, resp_info.sent) == (201, 0)


def test_truncated_chunked_body_gives_400() -> None:
    req = b"POST /e HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
    out = serve(echo_app, req)
    assert out.result == Closed()
    assert one(out.raw).status == 400


def test_client_gone_mid_response_does_not_raise() -> None:
    def client(s: socket.socket) -> None:
        s.sendall(GET)
        s.recv(10)
        s.close()

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [])
        for _ in range(2000):
            yield b"x" * 65536

    hooks = FakeHooks()
    log = FakeLog()
    a, b = socket.socketpair()
    t = threading.Thread(target=client, args=(b,))
    t.start()
    try:
        result = serve_connection(a, b"", app, make_config(), hooks, log)
    finally:
        t.join()
        a.close()
    assert result == Closed()
    assert not log.at("exception")
    assert len(hooks.accessed) == 1


@pytest.mark.parametrize("failing", [False, True])
def test_iterable_close_always_called(failing: bool) -> None:
    it = TrackedIterable([b"a", b"b"], fail_at=1 if failing else None)

    def app(environ: dict[str, Any], start_response: StartResponse) -> TrackedIterable:
        start_response("200 OK", [])
        return it

    serve(app, GET)
    assert it.closed


def test_post_request_hook_exception_is_logged() -> None:
    out = serve(hello_app, GET, hooks=FakeHooks(post_raises=True))
    assert one(out.raw).status == 200
    assert any("post_request" in m for m in out.log.at("exception"))
    assert len(out.hooks.accessed) == 1


def test_file_wrapper_uses_sendfile() -> None:
    payload = bytes(range(256)) * 1000
    closed: list[bool] = []
    with tempfile.TemporaryFile() as f:
        f.write(payload)
        f.seek(10)

        def app(environ: dict[str, Any], start_response: StartResponse) -> Any:
            start_response("200 OK", [("Content-Length", str(len(payload) - 10))])
            wrapper = environ["wsgi.file_wrapper"](f, 4096)
            original = wrapper.close

            def close() -> None:
                closed.append(True)
                original()

            wrapper.close = close
            return wrapper

        out = serve(app, GET)
    assert out.sendfiles == [len(payload) - 10]
    assert one(out.raw).body == payload[10:]
    assert closed == [True]
    assert out.hooks.accessed[0][0].sent == len(payload) - 10
    assert isinstance(out.result, Idle)


def test_file_wrapper_without_content_length_iterates() -> None:
    payload = b"z" * 50_000
    with tempfile.TemporaryFile() as f:
        f.write(payload)
        f.seek(0)

        def app(environ: dict[str, Any], start_response: StartResponse) -> Any:
            start_response("200 OK", [])
            return environ["wsgi.file_wrapper"](f)

        out = serve(app, GET)
    assert out.sendfiles == []
    resp = one(out.raw)
    assert resp.body == payload and resp.headers["transfer-encoding"] == "chunked"


def test_file_wrapper_short_file_closes() -> None:
    with tempfile.TemporaryFile() as f:
        f.write(b"short")
        f.seek(0)

        def app(environ: dict[str, Any], start_response: StartResponse) -> Any:
            start_response("200 OK", [("Content-Length", "100")])
            return environ["wsgi.file_wrapper"](f)

        out = serve(app, GET + GET)
    assert out.result == Closed()
    assert out.raw.count(b"HTTP/1.1") == 1
    assert out.log.at("error")


def test_list_response_is_joined_into_few_sends() -> None:
    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [])
        return [b"x"] * 1000

    out = serve(app, GET)
    assert one(out.raw).body == b"x" * 1000
    assert len(out.sends) == 1


def test_invalid_app_headers_give_500() -> None:
    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [("X-Evil", "a\r\nSet-Cookie: x=1")])
        return [b"x"]

    out = serve(app, GET)
    assert one(out.raw).status == 500
    assert b"Set-Cookie" not in out.raw


def test_app_connection_close_header_is_honoured() -> None:
    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [("Connection", "close"), ("Content-Length", "2")])
        return [b"ok"]

    out = serve(app, GET + GET)
    assert out.result == Closed()
    resp = one(out.raw)
    assert resp.status == 200 and resp.headers["connection"] == "close"
    assert len(out.hooks.pre) == 1  # the pipelined second request was not served


@pytest.mark.parametrize(
    "header",
    [("Transfer-Encoding", "chunked"), ("Upgrade", "x"), ("Keep-Alive", "1"), ("TE", "x")],
)
def test_app_hop_by_hop_header_gives_500_logged(header: tuple[str, str]) -> None:
    # PEP 3333: an application must not send hop-by-hop fields; the server owns the framing.
    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [header, ("Content-Length", "2")])
        return [b"ok"]

    out = serve(app, GET + GET)
    assert out.result == Closed()
    resp = one(out.raw)
    assert resp.status == 500 and resp.headers["connection"] == "close"
    assert any("Error handling request" in m for m in out.log.at("exception"))


def test_app_date_and_server_are_kept() -> None:
    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [("Server", "mine"), ("Date", "yesterday")])
        return []

    resp = one(serve(app, GET).raw)
    assert resp.headers["server"] == "mine" and resp.headers["date"] == "yesterday"
    assert sum(1 for k, _ in resp.header_list if k.lower() == b"server") == 1


def test_request_started_hand_back_keeps_alive_and_returns_idle() -> None:
    """max_requests reached: this response keeps the connection alive, then the connection
    goes back (with the pipelined request unread) instead of being served here."""
    out = serve(hello_app, GET + GET, hooks=FakeHooks(hand_back_after=1))
    assert out.result == Idle(leftover=GET)
    assert out.hooks.started == 1
    assert "connection" not in one(out.raw).headers


def test_request_started_hand_back_with_unread_body_drains_it_first() -> None:
    post = b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"
    out = serve(hello_app, post + GET, hooks=FakeHooks(hand_back_after=1))
    assert out.result == Idle(leftover=GET)


def test_request_started_close_on_http10_keepalive() -> None:
    req = b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    out = serve(hello_app, req + req, hooks=FakeHooks(close_after=1))
    assert out.result == Closed()
    assert one(out.raw).headers["connection"] == "close"


# ------------------------------------------------------------- response serialization


def test_no_100_continue_once_the_response_began() -> None:
    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        write = start_response("200 OK", [("Content-Length", "2")])
        write(b"ok")
        environ["wsgi.input"].read()  # too late for an interim response
        return []

    def client(s: socket.socket) -> None:
        s.sendall(
            b"POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        got = b""
        while not got.endswith(b"ok"):
            got += s.recv(1)
        assert got.startswith(b"HTTP/1.1 200 ")
        s.sendall(b"hello")

    out = serve(app, client=client)
    assert b" 100 " not in out.raw


def test_content_length_of_more_than_20_digits_gives_500() -> None:
    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [("Content-Length", "1" * 21)])
        return [b"x"]

    out = serve(app, GET)
    assert one(out.raw).status == 500
    assert out.result == Closed()


def test_response_head_bytes() -> None:
    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        start_response("201 Made", [("X-A", " v "), ("Host", "h"), ("Date", "D")])
        return [b"abc", b"de"]

    out = serve(app, GET)
    assert out.raw == (
        b"HTTP/1.1 201 Made\r\nHost: h\r\nServer: test-server/1\r\nX-A: v\r\nDate: D\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )


def test_upgrade_request_is_answered_and_the_connection_kept() -> None:
    # h11 sees the client's Upgrade field now; it is never accepted, and the connection stays
    # usable for the next request.
    upgrade = b"GET /u HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    out = serve(hello_app, upgrade + GET)
    responses, rest = parse(out.raw, ["GET", "GET"])
    assert [r.body for r in responses] == [b"hello /u", b"hello /x"] and rest == b""
    assert out.result == Idle(leftover=b"")


def test_wsgi_errors_is_the_stream_the_worker_gives() -> None:
    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        environ["wsgi.errors"].write("one\ntw")
        environ["wsgi.errors"].write("o\n")
        start_response("200 OK", [("Content-Length", "0")])
        return []

    out = serve(app, GET)
    assert out.hooks.errors.getvalue() == "one\ntwo\n"
    assert out.log.records == []  # nothing of it goes through the log with a prefix


def test_100_continue_is_the_one_serializers_bytes() -> None:
    from gunicorn_fdpass.http.serialize import CONTINUE

    assert CONTINUE == b"HTTP/1.1 100 Continue\r\n\r\n"
    request = b"POST /e HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"

    def client(sock: socket.socket) -> None:
        sock.sendall(request)
        assert sock.recv(len(CONTINUE)) == CONTINUE
        sock.sendall(b"abc")
        sock.shutdown(socket.SHUT_WR)

    out = serve(echo_app, client=client)
    assert one(out.raw).body == b"abc"


class _SocknameCounting(socket.socket):
    asked = 0

    def getsockname(self) -> Any:
        type(self).asked += 1
        return super().getsockname()


@pytest.mark.parametrize(("head", "asked", "server_name"), [
    (b"GET / HTTP/1.1\r\nHost: example.com:81\r\n\r\n", 0, "example.com"),
    (b"GET / HTTP/1.0\r\n\r\n", 1, "localhost"),  # a socketpair has no (host, port)
])
def test_the_servers_own_address_is_only_asked_for_a_request_without_host(
    head: bytes, asked: int, server_name: str
) -> None:
    seen: dict[str, Any] = {}

    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        seen.update(environ)
        start_response("200 OK", [("Content-Length", "0")])
        return []

    a, b = socket.socketpair()
    server = _SocknameCounting(a.family, a.type, fileno=a.detach())
    _SocknameCounting.asked = 0  # creating the socket asked once already (CPython does)
    b.sendall(head)
    b.shutdown(socket.SHUT_WR)
    try:
        serve_connection(server, b"", app, make_config(), FakeHooks(), FakeLog())
    finally:
        server.close()
        b.close()
    assert seen["SERVER_NAME"] == server_name
    assert _SocknameCounting.asked == asked


def test_served_requests_leave_no_reference_cycles() -> None:
    # Objects in a cycle wait for the garbage collector, whose passes (triggered by what is
    # left over) cost every request of a busy worker: a request's objects must be freed as
    # soon as it ends.
    post = b"POST /up HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\n\r\nhello"
    config, hooks, log = make_config(), FakeHooks(), FakeLog()

    def serve_once(app: Any, data: bytes) -> bytes:
        a, b = socket.socketpair()
        with a, b:
            b.sendall(data)
            assert isinstance(serve_connection(a, b"", app, config, hooks, log), Idle)
            return b.recv(65536)

    serve_once(echo_app, GET)  # warm up: imports and caches
    gc.collect()
    gc.disable()
    try:
        for app in (hello_app, echo_app, streaming_app):
            assert serve_once(app, GET + post).count(b"HTTP/1.1 200 OK\r\n") == 2
        assert gc.collect() == 0
    finally:
        gc.enable()
