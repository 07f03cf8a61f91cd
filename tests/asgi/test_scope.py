"""ASGI scopes from a parsed request (gunicorn_fdpass/asgi/scope.py) and loop selection."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from gunicorn_fdpass.asgi.loop import new_event_loop
from gunicorn_fdpass.asgi.scope import (
    http_scope,
    peers,
    request_http_scope,
    scope_address,
    websocket_scope,
)
from gunicorn_fdpass.http.proxy_protocol import ProxyInfo
from gunicorn_fdpass.http.request_head import parse_head
from gunicorn_fdpass.http.request_rules import RequestRules
from tests.support.serve import FakeLog


def parsed(head: bytes, trusted: bool = True) -> Any:
    return parse_head(head, RequestRules(), trusted=trusted)


def test_http_scope_has_every_field_of_the_spec() -> None:
    request = parsed(b"POST /caf%C3%A9/x%2Fy?a=1&b=%20 HTTP/1.1\r\nHost: example.com\r\n"
                     b"X-Custom: Value\r\nContent-Length: 0\r\n\r\n")
    state = {"pool": "db"}
    scope = http_scope(request, client=("10.0.0.1", 5555), server=("127.0.0.1", 8000),
                       proxy=None, url_scheme="http", root_path="/api/", state=state)
    assert scope == {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/café/x/y",
        "raw_path": b"/caf%C3%A9/x%2Fy",
        "query_string": b"a=1&b=%20",
        "root_path": "/api",
        "headers": [(b"host", b"example.com"), (b"x-custom", b"Value"),
                    (b"content-length", b"0")],
        "client": ("10.0.0.1", 5555),
        "server": ("127.0.0.1", 8000),
        "state": {"pool": "db"},
    }
    assert scope["state"] is not state


def test_trusted_proxy_sets_scheme_and_root_path_and_proxy_protocol_the_client() -> None:
    head = (b"GET / HTTP/1.0\r\nX-Forwarded-Proto: https\r\nSCRIPT_NAME: /mount\r\n\r\n")
    proxy = ProxyInfo("TCP4", "203.0.113.9", 4242, "10.0.0.2", 80, 0)
    scope = http_scope(parsed(head), client=("127.0.0.1", 1), server=None, proxy=proxy,
                       url_scheme="http", root_path="", state=None)
    assert scope["scheme"] == "https" and scope["root_path"] == "/mount"
    assert scope["client"] == ("203.0.113.9", 4242) and scope["http_version"] == "1.0"
    assert "state" not in scope and scope["server"] is None
    untrusted = http_scope(parsed(head, trusted=False), client=("8.8.8.8", 1), server=None,
                           proxy=None, url_scheme="http", root_path="", state=None)
    assert untrusted["scheme"] == "http" and untrusted["root_path"] == ""


@pytest.mark.parametrize("head", [
    b"GET /a%20b?q HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\r\n",
    b"OPTIONS * HTTP/1.0\r\nX-Forwarded-Proto: https\r\nSCRIPT_NAME: /m/\r\n\r\n",
])
@pytest.mark.parametrize("state", [None, {"k": 1}])
def test_request_scope_with_the_connections_peers_is_the_full_scope(
        head: bytes, state: dict[str, Any] | None) -> None:
    """What the worker builds per request, with client and server converted once per
    connection, is exactly http_scope's answer."""
    proxy = ProxyInfo("TCP6", "2001:db8::1", 4242, "2001:db8::2", 443, 0)
    for client, server, via in [(("10.0.0.1", 5), ("::1", 80, 0, 0), None),
                                (("127.0.0.1", 1), "/run/app.sock", proxy), (b"", None, None)]:
        kwargs: dict[str, Any] = {"url_scheme": "http", "root_path": "/r", "state": state}
        full = http_scope(parsed(head), client=client, server=server, proxy=via, **kwargs)
        fast = request_http_scope(parsed(head), peers(client, server, via), **kwargs)
        assert fast == full


def test_websocket_scope_scheme_and_subprotocols() -> None:
    head = (b"GET /ws?x=1 HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Protocol: chat, superchat\r\n\r\n")
    scope = websocket_scope(parsed(head), client=None, server=None, proxy=None,
                            url_scheme="https", root_path="", state={})
    assert scope["type"] == "websocket" and scope["scheme"] == "wss"
    assert scope["subprotocols"] == ["chat", "superchat"] and scope["query_string"] == b"x=1"
    assert "method" not in scope


def test_addresses() -> None:
    assert scope_address(("::1", 80, 0, 0)) == ("::1", 80)
    assert scope_address("/run/app.sock") == ("/run/app.sock", None)
    assert scope_address(b"") is None and scope_address(None) is None


@pytest.mark.parametrize("mode", ["auto", "uvloop", "asyncio"])
def test_uvloop_when_installed_asyncio_otherwise(mode: str, monkeypatch: pytest.MonkeyPatch
                                                 ) -> None:
    pytest.importorskip("uvloop")
    log = FakeLog()
    loop = new_event_loop(mode, log)
    try:
        assert type(loop).__module__.startswith("uvloop") == (mode != "asyncio")
    finally:
        loop.close()
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if it were not installed
    fallback = new_event_loop(mode, log)
    try:
        assert not type(fallback).__module__.startswith("uvloop")
    finally:
        fallback.close()
    assert bool(log.at("warning")) == (mode == "uvloop")  # asked for, not there: said so
