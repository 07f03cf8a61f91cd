"""In-process serving for the ASGI tests: one AsgiConnection over a real socketpair on an
asyncio loop, a fake worker side, and a small client that reads responses with h11."""

from __future__ import annotations

import asyncio
import datetime
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import h11

from gunicorn_fdpass.asgi.config import AsgiConfig
from gunicorn_fdpass.asgi.connection import AsgiConnection
from gunicorn_fdpass.asgi.direct import DirectTransport
from gunicorn_fdpass.http.keep_alive import After
from gunicorn_fdpass.http.response import ResponseInfo
from gunicorn_fdpass.worker.api import RequestInfo

from .serve import FakeLog, Resp, make_config

TIMEOUT = 5.0


@dataclass
class FakeSide:
    """The worker as a connection sees it, recording what the connection did."""

    state: dict[str, Any] | None = None
    after: After = After.CONTINUE
    waiting: bool = False
    stop: bool = False
    park_ok: bool = True
    #: What pre_request_wanted and access_wanted answer (a worker with Gunicorn's default
    #: hooks and no access log says no to both).
    pre_wanted: bool = True
    access_on: bool = True
    started: int = 0
    parked: list[bytes] = field(default_factory=list)
    ended_handed_back: list[bool] = field(default_factory=list)
    pre: list[RequestInfo] = field(default_factory=list)
    post: list[tuple[RequestInfo, dict[str, Any], ResponseInfo]] = field(default_factory=list)
    accessed: list[ResponseInfo] = field(default_factory=list)
    ended_event: asyncio.Event = field(default_factory=asyncio.Event)
    #: The master's copy of the connection's fd, which it keeps while a worker serves it
    #: and closes on Done (or watches again after a Park).
    master_copy: int = -1

    def request_started(self) -> After:
        self.started += 1
        return self.after

    def others_waiting(self) -> bool:
        return self.waiting

    def stopping(self) -> bool:
        return self.stop

    def access_wanted(self) -> bool:
        return self.access_on

    def pre_request_wanted(self) -> bool:
        return self.pre_wanted

    def pre_request(self, req: RequestInfo) -> None:
        self.pre.append(req)

    def post_request(self, req: RequestInfo, environ: dict[str, Any],
                     resp: ResponseInfo) -> None:
        self.post.append((req, environ, resp))

    def access(self, resp: ResponseInfo, req: RequestInfo, environ: dict[str, Any],
               request_time: datetime.timedelta) -> None:
        self.accessed.append(resp)

    def hand_back(self, conn: AsgiConnection, leftover: bytes) -> bool:
        if not self.park_ok:
            return False
        self.parked.append(leftover)
        return True

    def ended(self, conn: AsgiConnection) -> None:
        self.ended_handed_back.append(conn.handed_back)
        if not conn.handed_back:
            self.close_master_copy()  # Done: the master closes its copy
        self.ended_event.set()

    def close_master_copy(self) -> None:
        if self.master_copy >= 0:
            os.close(self.master_copy)
            self.master_copy = -1


class Client:
    """The client end of the socketpair, non-blocking, on the test's loop."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    async def send(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def recv(self, timeout: float = TIMEOUT) -> bytes:
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.sock_recv(self.sock, 65536), timeout)
        except ConnectionResetError:
            return b""

    async def response(self, method: str = "GET", timeout: float = TIMEOUT) -> Resp:
        """Read one response (framing by h11 as a client)."""
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method=method, target="/", headers=[("Host", "t")]))
        conn.send(h11.EndOfMessage())
        if self.buf:
            conn.receive_data(self.buf)  # (b"" would mean EOF to h11)
        head: h11.Response | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await self.recv(timeout))
                continue
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise AssertionError(f"unexpected {event!r}")
        assert head is not None
        self.buf = conn.trailing_data[0]
        return Resp(head.status_code,
                    {k.decode().lower(): v.decode("latin-1") for k, v in head.headers},
                    list(head.headers), bytes(body), head.http_version)

    async def read_to_eof(self, timeout: float = TIMEOUT) -> bytes:
        """Everything until the server closes (the test fails if it does not)."""
        data = bytearray(self.buf)
        self.buf = b""
        while chunk := await self.recv(timeout):
            data += chunk
        return bytes(data)


@dataclass
class Start:
    """How :func:`serve_asgi` starts its connection: on the direct transport, as the worker
    does for a plain connection, or on the loop's transport at once (as under TLS)."""

    direct: bool = True


#: Set per test by the ``connection_start`` fixture (tests/asgi/conftest.py).
START = Start()


@dataclass
class Served:
    side: FakeSide
    log: FakeLog
    conn: AsgiConnection


async def serve_asgi(app: Any, client: Callable[[Client], Awaitable[None]], *,
                     prefix: bytes = b"", side: FakeSide | None = None, idle: float = 30.0,
                     ws_max_message: int = 1 << 20, root_path: str = "",
                     hang_up: bool = True, **http: Any) -> Served:
    """Run ``client`` against one AsgiConnection serving ``app``; return once the client is
    done and the connection ended (handed back or closed). ``hang_up``: the client shuts its
    side once done, as a real client does after the last response (False: it stays, so an
    idle connection goes back to the master)."""
    side = side or FakeSide()
    log = FakeLog()
    loop = asyncio.get_running_loop()
    server_sock, client_sock = socket.socketpair()
    server_sock.setblocking(False)
    client_sock.setblocking(False)
    side.master_copy = os.dup(server_sock.fileno())
    config = AsgiConfig(http=make_config(**http), idle=idle, keepalive=2.0,
                        ws_max_message=ws_max_message, root_path=root_path)
    conn = AsgiConnection(7, server_sock.family, prefix, app, config, side, log,
                          sock=server_sock)
    if START.direct:
        # As the worker starts a plain connection (asgi/direct.py): the first wait for the
        # client's bytes moves it to the loop.
        conn.connection_made(DirectTransport(server_sock, conn, loop, conn.move_soon))
    else:
        await loop.connect_accepted_socket(lambda: conn, server_sock)
    served = loop.create_task(conn.serve())

    async def ticker() -> None:
        while True:
            conn.tick(time.monotonic())
            await asyncio.sleep(0.02)

    ticking = loop.create_task(ticker())
    try:
        await client(Client(client_sock))
        if hang_up and client_sock.fileno() >= 0:
            try:
                client_sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        await asyncio.wait_for(side.ended_event.wait(), TIMEOUT)
        await asyncio.wait_for(served, TIMEOUT)
    finally:
        ticking.cancel()
        client_sock.close()
        side.close_master_copy()
    return Served(side, log, conn)


def request(target: str = "/", method: str = "GET", headers: dict[str, str] | None = None,
            body: bytes = b"") -> bytes:
    """Request bytes (HTTP/1.1, Host set, Content-Length when there is a body)."""
    fields = {"Host": "t", **(headers or {})}
    if body and "Transfer-Encoding" not in fields:
        fields.setdefault("Content-Length", str(len(body)))
    lines = "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    return f"{method} {target} HTTP/1.1\r\n{lines}\r\n".encode("latin-1") + body
