"""The ASGI HTTP cycle in process: an AsgiConnection over a socketpair (tests/support/
asgi_serve.py), plain ASGI apps, every reply read back by an h11 client."""

from __future__ import annotations

import asyncio
import gc
import json
import socket
from typing import Any

import pytest

from gunicorn_fdpass.asgi.config import AsgiConfig
from gunicorn_fdpass.asgi.connection import AsgiConnection
from gunicorn_fdpass.asgi.http_cycle import response_headers
from gunicorn_fdpass.http.keep_alive import After
from gunicorn_fdpass.http.request_rules import AddressAllowList
from tests.support.asgi_serve import Client, FakeSide, request, serve_asgi
from tests.support.serve import FakeLog, make_config

pytestmark = pytest.mark.usefixtures("connection_start")

Scope = dict[str, Any]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def hello(scope: Scope, receive: Any, send: Any) -> None:
    assert scope["type"] == "http"
    body = json.dumps({"path": scope["path"], "method": scope["method"]}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def test_json_response_and_keep_alive_on_one_connection() -> None:
    async def client(c: Client) -> None:
        for path in ("/a", "/b"):
            await c.send(request(path))
            resp = await c.response()
            assert resp.status == 200
            assert json.loads(resp.body) == {"path": path, "method": "GET"}
            assert "connection" not in resp.headers
            assert resp.headers["server"] == "test-server/1" and "date" in resp.headers
        await c.send(request("/c", headers={"Connection": "close"}))
        resp = await c.response()
        assert resp.headers["connection"] == "close"
        assert await c.read_to_eof() == b""

    served = run(serve_asgi(hello, client))
    assert served.side.started == 3
    assert served.side.ended_handed_back == [False]
    assert [r.status_code for r in served.side.accessed] == [200, 200, 200]


def test_streaming_response_is_chunked_and_each_piece_goes_out_at_once() -> None:
    gate = asyncio.Event()

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        await gate.wait()  # the client must see the first piece before the second exists
        await send({"type": "http.response.body", "body": b"second", "more_body": False})

    async def client(c: Client) -> None:
        await c.send(request("/", headers={"Connection": "close"}))
        first = await c.recv()
        assert b"Transfer-Encoding: chunked" in first and first.endswith(b"5\r\nfirst\r\n")
        gate.set()
        rest = await c.read_to_eof()
        assert rest == b"6\r\nsecond\r\n0\r\n\r\n"

    run(serve_asgi(app, client))


def test_request_body_streams_with_more_body_then_disconnect_after_the_response() -> None:
    messages: list[dict[str, Any]] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            messages.append(message)
            if not message.get("more_body"):
                break
        total = sum(len(m["body"]) for m in messages)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(total).encode()})
        messages.append(await receive())  # after the response: http.disconnect at once

    async def client(c: Client) -> None:
        await c.send(request("/", method="POST", headers={"Transfer-Encoding": "chunked",
                                                          "Connection": "close"}))
        await c.send(b"5\r\nhello\r\n")
        await asyncio.sleep(0.05)  # a second piece, later: the app gets it in a new message
        await c.send(b"6\r\n world\r\n0\r\n\r\n")
        resp = await c.response("POST")
        assert resp.body == b"11"
        await c.read_to_eof()

    run(serve_asgi(app, client))
    assert messages[0] == {"type": "http.request", "body": b"hello", "more_body": True}
    assert b"".join(m.get("body", b"") for m in messages[:-1]) == b"hello world"
    assert messages[-2]["more_body"] is False
    assert messages[-1] == {"type": "http.disconnect"}


def test_head_and_204_have_no_body_and_the_connection_goes_on() -> None:
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        status = 204 if scope["path"] == "/204" else 200
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-length", b"5")] if status == 200 else []})
        await send({"type": "http.response.body", "body": b"hello"})

    async def client(c: Client) -> None:
        await c.send(request("/", method="HEAD"))
        head = await c.response("HEAD")
        assert head.status == 200 and head.body == b"" and head.headers["content-length"] == "5"
        await c.send(request("/204", headers={"Connection": "close"}))
        no_content = await c.response()
        assert no_content.status == 204 and no_content.body == b""
        assert await c.read_to_eof() == b""

    run(serve_asgi(app, client))


def test_exception_before_the_response_is_a_logged_500() -> None:
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    async def client(c: Client) -> None:
        await c.send(request("/x"))
        resp = await c.response()
        assert resp.status == 500 and resp.headers["connection"] == "close"
        assert await c.read_to_eof() == b""

    served = run(serve_asgi(app, client))
    assert served.log.at("exception") == ["Error handling request /x"]
    assert served.side.accessed[0].status_code == 500


def test_exception_after_the_response_began_aborts_the_connection() -> None:
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"100")]})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise RuntimeError("boom")

    async def client(c: Client) -> None:
        await c.send(request("/"))
        raw = await c.read_to_eof()
        assert raw.startswith(b"HTTP/1.1 200 OK\r\n") and raw.endswith(b"\r\n\r\npartial")

    served = run(serve_asgi(app, client))
    assert served.log.at("exception") == ["Error handling request /"]


def test_app_returning_without_a_response_gets_500() -> None:
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        return None

    async def client(c: Client) -> None:
        await c.send(request("/"))
        assert (await c.response()).status == 500
        await c.read_to_eof()

    served = run(serve_asgi(app, client))
    assert any("without a response" in m for m in served.log.at("error"))


def test_refused_request_gets_gunicorns_status_and_never_reaches_the_app() -> None:
    called = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        called.append(scope)

    async def client(c: Client) -> None:
        await c.send(b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2"
                     b"\r\n\r\n")
        resp = await c.response()
        assert resp.status == 400 and resp.headers["connection"] == "close"
        await c.read_to_eof()

    served = run(serve_asgi(app, client))
    assert called == []
    assert served.log.at("warning")[0].startswith("Invalid request from")


def test_expect_100_continue_is_sent_when_the_app_reads_the_body() -> None:
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        message = await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": message["body"]})

    async def client(c: Client) -> None:
        await c.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        assert await c.recv() == b"HTTP/1.1 100 Continue\r\n\r\n"
        await c.send(b"data")
        assert (await c.response("POST")).body == b"data"
        await c.send(request("/", headers={"Connection": "close"}))
        await c.response()
        await c.read_to_eof()

    run(serve_asgi(app, client))


def test_idle_connection_goes_back_with_the_bytes_read_past_the_request() -> None:
    async def client(c: Client) -> None:
        # The second request is only partly there: it goes back to the master with it.
        await c.send(request("/") + b"GET /next HT")
        assert (await c.response()).status == 200

    served = run(serve_asgi(hello, client, idle=0.05, hang_up=False))
    assert served.side.parked == [b"GET /next HT"]
    assert served.side.ended_handed_back == [True]
    assert served.conn.handed_back


def test_idle_connection_goes_back_at_once_when_the_worker_stops_or_work_waits() -> None:
    for side in (FakeSide(stop=True), FakeSide(waiting=True)):
        async def client(c: Client) -> None:
            await c.send(request("/"))
            assert (await c.response()).status == 200

        served = run(serve_asgi(hello, client, side=side, hang_up=False))
        assert served.side.parked == [b""]


def test_a_draining_worker_hands_the_connection_back_after_the_response() -> None:
    async def client(c: Client) -> None:
        await c.send(request("/"))
        resp = await c.response()
        assert resp.status == 200 and "connection" not in resp.headers

    served = run(serve_asgi(hello, client, side=FakeSide(after=After.HAND_BACK),
                           hang_up=False))
    assert served.side.parked == [b""]


def test_a_stopping_server_answers_with_connection_close() -> None:
    async def client(c: Client) -> None:
        await c.send(request("/"))
        assert (await c.response()).headers["connection"] == "close"
        await c.read_to_eof()

    served = run(serve_asgi(hello, client, side=FakeSide(after=After.CLOSE)))
    assert served.side.parked == [] and served.side.ended_handed_back == [False]


def test_send_after_the_client_left_raises_oserror_and_is_not_a_server_error() -> None:
    outcome: list[BaseException] = []
    first_sent = asyncio.Event()

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            while True:
                await send({"type": "http.response.body", "body": b"x" * 65536,
                            "more_body": True})
                first_sent.set()
                await asyncio.sleep(0.01)
        except OSError as exc:
            outcome.append(exc)
            raise

    async def client(c: Client) -> None:
        await c.send(request("/"))
        await first_sent.wait()
        c.sock.close()

    served = run(serve_asgi(app, client))
    assert outcome and isinstance(outcome[0], OSError)
    assert served.log.at("exception") == []


def test_disconnect_is_received_when_the_client_goes_during_a_long_poll() -> None:
    got: list[dict[str, Any]] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        got.append(await receive())  # the (empty) body
        got.append(await receive())  # blocks until the client goes

    async def client(c: Client) -> None:
        await c.send(request("/"))
        await asyncio.sleep(0.05)
        c.sock.close()

    run(serve_asgi(app, client))
    assert got == [{"type": "http.request", "body": b"", "more_body": False},
                   {"type": "http.disconnect"}]


def test_hop_by_hop_fields_of_the_app_are_dropped_and_bad_headers_are_a_500() -> None:
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["path"] == "/bad":
            headers = [(b"x-bad", b"a\r\nInjected: 1")]
        else:
            headers = [(b"transfer-encoding", b"chunked"), (b"keep-alive", b"timeout=5"),
                       (b"x-ok", b"1")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    async def client(c: Client) -> None:
        await c.send(request("/"))
        resp = await c.response()
        assert resp.headers["x-ok"] == "1" and "keep-alive" not in resp.headers
        assert resp.headers["transfer-encoding"] == "chunked" and resp.body == b"ok"
        await c.send(request("/bad"))
        bad = await c.response()
        assert bad.status == 500 and "injected" not in bad.headers
        await c.read_to_eof()

    run(serve_asgi(app, client))


@pytest.mark.parametrize(("headers", "error"), [
    ([(b"bad name", b"1")], ValueError),
    ([(b"", b"1")], ValueError),
    ([(b"x-a", b"1\r\nInjected: 1")], ValueError),
    ([(b"x-a", b"\x00")], ValueError),
    ([("x-a", b"1")], TypeError),
    ([(b"x-a", "1")], TypeError),
    ([(b"x-a", bytearray(b"1"))], TypeError),
    ([(b"x-a", b"1", b"2")], ValueError),
])
def test_response_headers_refuses_what_validate_headers_refuses(
        headers: list[Any], error: type[Exception]) -> None:
    for _ in range(2):  # the second time, a valid name comes from the cache
        with pytest.raises(error):
            response_headers([(b"x-ok", b"1"), *headers])


def test_response_headers_converts_and_drops_hop_by_hop_fields() -> None:
    class Raw(bytes):
        pass

    for _ in range(2):
        assert response_headers([
            (b"Content-Type", b"text/plain; q=\t\xe9"), (b"TE", b"x"), (b"upgrade", b"y"),
            (b"connection", b"close"), (Raw(b"x-sub"), Raw(b"v")), (b"x-empty", b""),
        ]) == [("Content-Type", "text/plain; q=\t\xe9"), ("connection", "close"),
               ("x-sub", "v"), ("x-empty", "")]


@pytest.mark.parametrize("status", [99, 1000, -200, True, "200", 200.0])
def test_a_status_that_is_not_three_digits_is_a_500(status: Any) -> None:
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def client(c: Client) -> None:
        await c.send(request("/"))
        assert (await c.response()).status == 500
        await c.read_to_eof()

    served = run(serve_asgi(app, client))
    assert served.log.at("exception")


@pytest.mark.parametrize("size", [0, 1000, 300_000])
def test_unread_body_is_drained_when_small_and_closes_the_connection_when_large(
        size: int) -> None:
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ignored your body"})

    async def client(c: Client) -> None:
        await c.send(request("/", method="POST", body=b"b" * size))
        resp = await c.response("POST")
        if size > 64 * 1024:
            assert resp.headers["connection"] == "close"
            return
        assert "connection" not in resp.headers
        await c.send(request("/", headers={"Connection": "close"}))
        assert (await c.response()).status == 200

    run(serve_asgi(app, client))


def test_scope_state_is_a_copy_of_the_lifespan_state_per_request() -> None:
    seen: list[dict[str, Any]] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        seen.append(scope["state"])
        scope["state"]["mine"] = len(seen)
        await hello(scope, receive, send)

    async def client(c: Client) -> None:
        for _ in range(2):
            await c.send(request("/"))
            await c.response()
        await c.send(request("/", headers={"Connection": "close"}))
        await c.response()

    side = FakeSide(state={"db": "pool"})
    run(serve_asgi(app, client, side=side))
    assert [s["db"] for s in seen] == ["pool"] * 3
    assert seen[0] is not seen[1] and side.state == {"db": "pool"}


def test_served_requests_leave_no_reference_cycles() -> None:
    # Objects in a cycle wait for the garbage collector, whose passes cost every request of
    # a busy worker: a request's objects must be freed as soon as it ends.
    async def client(c: Client) -> None:
        await c.send(request("/warm"))
        await c.response()
        gc.collect()
        gc.disable()
        try:
            for _ in range(3):
                await c.send(request("/json"))
                assert (await c.response()).status == 200
                await c.send(request("/up", method="POST", body=b"x" * 100))
                assert (await c.response("POST")).status == 200
            assert gc.collect() == 0
        finally:
            gc.enable()

    run(serve_asgi(hello, client))


@pytest.mark.parametrize(("pre", "access"), [(False, False), (False, True), (True, False)])
def test_hooks_see_the_request_only_when_wanted(pre: bool, access: bool) -> None:
    """A hook nobody set is not fed (no request info is made for it); one that is set sees
    the request as before, whichever other one is off."""
    async def client(c: Client) -> None:
        for path in ("/a?x=1", "/b"):
            await c.send(request(path))
            assert (await c.response()).status == 200

    side = FakeSide(pre_wanted=pre, access_on=access)
    served = run(serve_asgi(hello, client, side=side))
    assert side.started == 2
    assert [(r.method, r.path, r.query) for r in side.pre] == (
        [("GET", "/a", "x=1"), ("GET", "/b", "")] if pre else [])
    assert [(req.path, req.uri, environ["PATH_INFO"], resp.status_code)
            for req, environ, resp in side.post] == (
        [("/a", "/a?x=1", "/a", 200), ("/b", "/b", "/b", 200)] if access else [])
    assert len(side.accessed) == (2 if access else 0)
    assert served.log.at("exception") == [] and served.log.at("error") == []


def test_scope_client_is_the_proxy_headers_on_every_request_of_the_connection() -> None:
    clients: list[Any] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        clients.append((scope["client"], scope["server"]))
        await hello(scope, receive, send)

    async def client(c: Client) -> None:
        for path in ("/a", "/b"):
            await c.send(request(path))
            assert (await c.response()).status == 200

    run(serve_asgi(app, client, prefix=b"PROXY TCP4 203.0.113.9 10.0.0.2 4242 80\r\n",
                   proxy_protocol="v1", proxy_allow=AddressAllowList(["*"])))
    assert clients == [(("203.0.113.9", 4242), None)] * 2


def test_a_connection_given_the_workers_loop_does_not_look_it_up(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """asyncio.get_running_loop() costs a getpid() system call per connection."""
    class Transport(asyncio.Transport):
        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return {"peername": ("10.0.0.1", 1), "sockname": ("10.0.0.2", 2)}.get(name)

    def looked_up() -> asyncio.AbstractEventLoop:
        raise AssertionError("the loop was looked up")

    loop = asyncio.new_event_loop()
    try:
        conn = AsgiConnection(1, socket.AF_INET, b"", hello,
                              AsgiConfig(http=make_config()), FakeSide(), FakeLog(), loop)
        monkeypatch.setattr(asyncio, "get_running_loop", looked_up)
        conn.connection_made(Transport())
        assert conn.loop is loop and conn.client_addr == ("10.0.0.1", 1)
    finally:
        loop.close()


def test_a_client_done_with_its_connection_is_not_waited_for() -> None:
    """After the answer to a request that asked to close and was read to its end, the
    connection ends at once, as in the WSGI worker: the client owes no EOF (before, the
    connection waited up to 2 s for it, holding its place in the worker)."""
    side = FakeSide()

    async def client(c: Client) -> None:
        await c.send(request("/", headers={"Connection": "close"}))
        assert (await c.response()).status == 200
        assert await c.read_to_eof() == b""
        await asyncio.wait_for(side.ended_event.wait(), 1.0)  # the client still holds on

    served = run(serve_asgi(hello, client, side=side, hang_up=False))
    assert served.side.ended_handed_back == [False]


def test_bytes_behind_a_closing_request_make_the_close_linger() -> None:
    """What the client sent past its ``Connection: close`` request is read and dropped until
    its EOF: closing over unread bytes would reset the connection under the response."""
    async def client(c: Client) -> None:
        await c.send(request("/", headers={"Connection": "close"}) + request("/again"))
        assert (await c.response()).status == 200
        assert await c.read_to_eof() == b""  # the second request is not answered

    served = run(serve_asgi(hello, client))
    assert served.side.started == 1 and served.side.parked == []


def test_a_large_response_to_a_slow_reader_arrives_whole_and_the_connection_goes_on() -> None:
    """Far more than the socket takes at once: the direct transport hands the rest to the
    loop's, in order, and the next request on the connection is served there."""
    big = bytes(range(256)) * (16 * 1024)  # 4 MiB, past any socket buffer

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        body = big if scope["path"] == "/big" else b"small"
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def client(c: Client) -> None:
        await c.send(request("/big"))
        assert (await c.response()).body == big
        await c.send(request("/small"))
        assert (await c.response()).body == b"small"

    served = run(serve_asgi(app, client))
    assert served.conn.direct is None  # it moved to the loop
    assert served.side.started == 2
