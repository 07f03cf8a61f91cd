"""The most important refusals and the proxy settings, against a real Gunicorn master.

Two servers for the module: one with PROXY protocol accepted from 127.0.0.1 (the test client)
and forwarded headers trusted, one that trusts no proxy. The corpus (test_corpus.py) covers
the long tail of refusals against a default server.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.support.http import RawHTTPConnection, build_request
from tests.support.server import GunicornServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

V1 = b"PROXY TCP4 203.0.113.7 192.0.2.1 40000 443\r\n"


@pytest.fixture(scope="module")
def proxied(module_server_factory: Callable[..., GunicornServer]) -> GunicornServer:
    return module_server_factory(workers=1, args=[
        "--proxy-protocol", "auto", "--proxy-allow-from", "127.0.0.1",
        "--forwarded-allow-ips", "127.0.0.1", "--keep-alive", "5"])


@pytest.fixture(scope="module")
def untrusting(module_server_factory: Callable[..., GunicornServer]) -> GunicornServer:
    return module_server_factory(workers=1, args=[
        "--proxy-protocol", "v1", "--proxy-allow-from", "10.0.0.1",
        "--forwarded-allow-ips", "10.0.0.1"])


def environ(conn: RawHTTPConnection, raw: bytes = b"") -> dict[str, Any]:
    conn.send(raw + build_request("GET", "/environ", {"X-Forwarded-Proto": "https"}))
    resp = conn.read_response()
    assert resp is not None and resp.status == 200, resp
    body = resp.json()
    assert isinstance(body, dict)
    return body


@pytest.mark.keepalive
def test_proxy_v1_sets_remote_addr_across_keepalive(proxied: GunicornServer) -> None:
    with RawHTTPConnection(port=proxied.port) as conn:
        first = environ(conn, V1)
        assert first["REMOTE_ADDR"] == "203.0.113.7" and first["PROXY_PROTOCOL"] == "TCP4"
        assert first["wsgi.url_scheme"] == "https"
        # The idle connection went back to the master in between; the PROXY information
        # came back with it.
        second = environ(conn)
        assert second["REMOTE_ADDR"] == "203.0.113.7"


def test_untrusted_peer_gets_403_for_proxy_and_no_scheme_override(
    untrusting: GunicornServer,
) -> None:
    with RawHTTPConnection(port=untrusting.port) as conn:
        conn.send(V1 + build_request("GET", "/environ"))
        resp = conn.read_response()
        assert resp is not None and resp.status == 403
    with RawHTTPConnection(port=untrusting.port) as conn:
        env = environ(conn)
        assert env["wsgi.url_scheme"] == "http" and env["REMOTE_ADDR"] == "127.0.0.1"


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nHost: t\r\nX: " + b"a" * 9000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/2.0\r\nHost: t\r\n\r\n", 400),
        (b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: xchunked\r\n\r\n", 501),
        (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
         b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5, 5\r\n\r\nhello", 400),
    ],
)
def test_key_refusals_and_nothing_pipelined_is_served(
    proxied: GunicornServer, raw: bytes, status: int
) -> None:
    with RawHTTPConnection(port=proxied.port) as conn:
        conn.send(raw + build_request("GET", "/"))
        resp = conn.read_response()
        assert resp is not None and resp.status == status
        rest = conn.remaining()
        while data := conn.sock.recv(65536):  # bounded by the connection's timeout
            rest += data
        assert b"Hello" not in rest  # the pipelined GET / was never served


@pytest.mark.keepalive
def test_chunked_upload_reaches_app_with_content_length(proxied: GunicornServer) -> None:
    body = b"0123456789" * 1000
    chunked = b"".join(b"%x\r\n%s\r\n" % (1000, body[i : i + 1000])
                       for i in range(0, len(body), 1000)) + b"0\r\n\r\n"
    with RawHTTPConnection(port=proxied.port) as conn:
        conn.send(build_request("POST", "/echo", {"Transfer-Encoding": "chunked"}) + chunked)
        resp = conn.read_response(method="POST")
        assert resp is not None and resp.status == 200
        assert resp.body == body
        assert resp.header("X-Content-Length-Env") == str(len(body))
