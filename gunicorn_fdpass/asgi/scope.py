"""The ASGI connection scope of a parsed request (HTTP and WebSocket), and the WSGI-style
environ the access log and ``post_request`` hook read. Pure.

``path`` is the whole request path, decoded; ``root_path`` is the mount point (Gunicorn's
``--root-path``, else a ``SCRIPT_NAME`` environment variable as the WSGI worker reads it, or a
trusted proxy's ``SCRIPT_NAME`` field). As in the WSGI worker, the path is not rewritten:
frameworks (Starlette, Django) strip ``root_path`` from ``path`` when it starts with it.
"""

from __future__ import annotations

from typing import Any, Final, NamedTuple
from urllib.parse import unquote

from ..http.memo import remember
from ..http.proxy_protocol import ProxyInfo
from ..http.request_rules import ParsedRequest
from ..wsgi import Address, build_environ
from .types import Scope

__all__ = [
    "ASGI_VERSION",
    "Peers",
    "access_environ",
    "http_scope",
    "peers",
    "request_http_scope",
    "scope_address",
    "websocket_scope",
]

#: ASGI 3.0; the HTTP and WebSocket specs at 2.4, where ``send()`` on a closed connection
#: raises an ``OSError`` (frameworks then stop streaming instead of listening for
#: ``http.disconnect`` in a second task).
ASGI_VERSION: Final = {"version": "3.0", "spec_version": "2.4"}


def scope_address(addr: Address) -> tuple[str, int | None] | None:
    """A socket address as ASGI's ``client``/``server``: ``(host, port)``, ``(path, None)``
    for a UNIX socket, None when unknown."""
    if isinstance(addr, tuple) and len(addr) >= 2:
        return str(addr[0]), int(addr[1])
    if isinstance(addr, bytes):
        addr = addr.decode("latin-1")
    if isinstance(addr, str) and addr:
        return addr, None
    return None


def _client(client: Address, proxy: ProxyInfo | None) -> tuple[str, int | None] | None:
    if proxy is not None and proxy.client_addr is not None:
        return proxy.client_addr, proxy.client_port
    return scope_address(client)


#: ``http_version`` of the usual versions, spelled once.
_VERSIONS: Final = {(1, 1): "1.1", (1, 0): "1.0"}

#: Header names as ASGI wants them, by name as parsed: a worker sees the same few names
#: again and again. Bounded, since the names clients send are not.
_NAMES: dict[str, bytes] = {}
_MAX_NAMES: Final = 512


def _asgi_name(name: str) -> bytes:
    return remember(_NAMES, name, name.lower().encode("latin-1"), _MAX_NAMES)


def _headers(request: ParsedRequest) -> list[tuple[bytes, bytes]]:
    # Gunicorn keeps names upper case; ASGI wants them lower case, as bytes.
    names = _NAMES
    return [(names.get(name) or _asgi_name(name), value.encode("latin-1"))
            for name, value in request.headers]


class Peers(NamedTuple):
    """A connection's ``client`` and ``server`` as ASGI gives them: the same for every request
    on the connection, so converted once per connection (:func:`peers`)."""

    client: tuple[str, int | None] | None
    server: tuple[str, int | None] | None


def peers(client: Address, server: Address, proxy: ProxyInfo | None) -> Peers:
    """The scope's ``client`` (a PROXY header's client first) and ``server``."""
    return Peers(_client(client, proxy), scope_address(server))


def http_scope(request: ParsedRequest, *, client: Address, server: Address,
               proxy: ProxyInfo | None, url_scheme: str, root_path: str,
               state: dict[str, Any] | None) -> Scope:
    """The ``http`` scope of ``request``; ``url_scheme`` unless a trusted proxy said."""
    return request_http_scope(request, peers(client, server, proxy), url_scheme=url_scheme,
                              root_path=root_path, state=state)


def request_http_scope(request: ParsedRequest, ends: Peers, *, url_scheme: str,
                       root_path: str, state: dict[str, Any] | None) -> Scope:
    """:func:`http_scope` with the connection's :class:`Peers` already converted (what the
    worker calls for every request)."""
    path = request.path
    version = request.version
    # One literal with every key: a dict grown key by key past its first size is resized,
    # on every request.
    scope: Scope = {
        "type": "http",
        "asgi": ASGI_VERSION,
        "http_version": _VERSIONS.get(version) or f"{version[0]}.{version[1]}",
        "method": request.method,
        "scheme": request.scheme or url_scheme,
        "path": unquote(path, errors="replace") if "%" in path else path,
        "raw_path": path.encode("latin-1"),
        "query_string": request.query.encode("latin-1"),
        "root_path": (request.script_name if request.script_name is not None
                      else root_path).rstrip("/"),
        "headers": _headers(request),
        "client": ends.client,
        "server": ends.server,
    }
    if state is not None:
        # A shallow copy per request (lifespan spec): one request's keys never reach another.
        scope["state"] = state.copy()
    return scope


def websocket_scope(request: ParsedRequest, *, client: Address, server: Address,
                    proxy: ProxyInfo | None, url_scheme: str, root_path: str,
                    state: dict[str, Any] | None) -> Scope:
    """The ``websocket`` scope of an upgrade request (scheme ``ws`` or ``wss``)."""
    scope = request_http_scope(request, peers(client, server, proxy), url_scheme=url_scheme,
                               root_path=root_path, state=state)
    del scope["method"]  # the websocket scope has none
    scope["type"] = "websocket"
    scope["scheme"] = "wss" if scope["scheme"] == "https" else "ws"
    protocols = [
        token.strip(" \t")
        for name, value in request.headers if name == "SEC-WEBSOCKET-PROTOCOL"
        for token in value.split(",") if token.strip(" \t")
    ]
    scope["subprotocols"] = protocols
    return scope


def access_environ(request: ParsedRequest, *, client: Address, server: Address,
                   proxy: ProxyInfo | None, url_scheme: str, root_path: str,
                   server_software: str) -> dict[str, Any]:
    """What Gunicorn's access log format and ``post_request`` read, as the WSGI worker
    builds it (no ``wsgi.input``: an ASGI request has none)."""
    environ = build_environ(
        request, server=server, client=client, url_scheme=url_scheme, script_name=root_path,
        wsgi_input=None, wsgi_errors=None, multithread=False, server_software=server_software,
    )
    if proxy is not None:
        environ.update(proxy.environ())
    return environ
