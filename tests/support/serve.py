"""In-process serving for the HTTP tests: serve_connection over a real socketpair, with fake
hooks and log, and a parser for what came back."""

from __future__ import annotations

import datetime
import io
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import h11

from gunicorn_fdpass.http.config import HttpConfig
from gunicorn_fdpass.worker.api import After, Closed, Idle, RequestInfo, ResponseInfo
from gunicorn_fdpass.worker.connection import serve_connection

StartResponse = Callable[..., Callable[[bytes], None]]


# ---------------------------------------------------------------------------- test doubles


class FakeLog:
    def __init__(self) -> None:
        self.records: list[tuple[str, str]] = []

    def _record(self, level: str, msg: str, *args: Any, **kwargs: Any) -> None:
        self.records.append((level, msg % args if args else msg))

    def debug(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._record("debug", msg, *args)

    def info(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._record("info", msg, *args)

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._record("warning", msg, *args)

    def error(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._record("error", msg, *args)

    def exception(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._record("exception", msg, *args)

    def at(self, level: str) -> list[str]:
        return [m for lv, m in self.records if lv == level]


@dataclass
class FakeHooks:
    close_after: int | None = None  # request_started() says CLOSE from this request on
    hand_back_after: int | None = None  # ... HAND_BACK from this request on
    waiting: bool = False  # others_waiting(): work that arrived earlier waits in the master
    started: int = 0
    pre: list[RequestInfo] = field(default_factory=list)
    post: list[tuple[RequestInfo, dict[str, Any], ResponseInfo]] = field(default_factory=list)
    accessed: list[tuple[ResponseInfo, RequestInfo, datetime.timedelta]] = field(
        default_factory=list
    )
    post_raises: bool = False
    errors: io.StringIO = field(default_factory=io.StringIO)  # every request's wsgi.errors

    def wsgi_errors(self) -> io.StringIO:
        return self.errors

    def others_waiting(self) -> bool:
        return self.waiting

    def access_wanted(self) -> bool:
        return True

    def request_started(self) -> After:
        self.started += 1
        if self.close_after is not None and self.started >= self.close_after:
            return After.CLOSE
        if self.hand_back_after is not None and self.started >= self.hand_back_after:
            return After.HAND_BACK
        return After.CONTINUE

    def pre_request(self, req: RequestInfo) -> None:
        self.pre.append(req)

    def pre_request_wanted(self) -> bool:
        return True

    def post_request(self, req: RequestInfo, environ: dict[str, Any], resp: ResponseInfo) -> None:
        self.post.append((req, environ, resp))
        if self.post_raises:
            raise RuntimeError("post_request hook failed")

    def access(
        self,
        resp: ResponseInfo,
        req: RequestInfo,
        environ: dict[str, Any],
        request_time: datetime.timedelta,
    ) -> None:
        self.accessed.append((resp, req, request_time))


class CountingSocket(socket.socket):
    """A real socket that records what goes out through send()/sendall()/sendfile() (one
    entry per call: the worker's Transport sends with send())."""

    sends: list[bytes]
    sendfiles: list[int]

    def send(self, data: Any, flags: int = 0) -> int:
        sent = super().send(data, flags)
        self.sends.append(bytes(data)[:sent])
        return sent

    def sendall(self, data: Any, flags: int = 0) -> None:
        self.sends.append(bytes(data))
        super().sendall(data, flags)

    def sendfile(self, file: Any, offset: int = 0, count: int | None = None) -> int:
        sent = super().sendfile(file, offset, count)
        self.sendfiles.append(sent)
        return sent


def make_config(**overrides: Any) -> HttpConfig:
    values: dict[str, Any] = {
        "server_software": "test-server/1",
        "url_scheme": "http",
        "script_name": "",
        "multithread": False,
        "multiprocess": True,
        "keepalive": True,
        "io_timeout": 2.0,
    }
    values.update(overrides)
    return HttpConfig(**values)


@dataclass
class Outcome:
    result: Closed | Idle
    raw: bytes  # everything the client received
    hooks: FakeHooks
    log: FakeLog
    sends: list[bytes]
    sendfiles: list[int]


def serve(
    app: Any,
    request: bytes = b"",
    *,
    prefix: bytes = b"",
    hooks: FakeHooks | None = None,
    client_eof: bool = False,
    client: Callable[[socket.socket], None] | None = None,
    **config: Any,
) -> Outcome:
    """Serve ``request`` (written by the client before serving starts) or run ``client``
    against serve_connection, then close the server side like the worker does and return
    everything the client received."""
    hooks = hooks or FakeHooks()
    log = FakeLog()
    a, b = socket.socketpair()
    server = CountingSocket(a.family, a.type, fileno=a.detach())
    server.sends, server.sendfiles = [], []
    received = bytearray()

    def reader() -> None:
        while True:
            data = b.recv(65536)
            if not data:
                return
            received.extend(data)

    if client is None:
        if request:
            b.sendall(request)
        if client_eof:
            b.shutdown(socket.SHUT_WR)
        thread = threading.Thread(target=reader, daemon=True)
    else:

        def run_client() -> None:
            assert client is not None
            client(b)
            reader()

        thread = threading.Thread(target=run_client, daemon=True)
    thread.start()
    try:
        result = serve_connection(server, prefix, app, make_config(**config), hooks, log)
    finally:
        server.close()
    thread.join(5)
    assert not thread.is_alive()
    b.close()
    return Outcome(result, bytes(received), hooks, log, server.sends, server.sendfiles)


@dataclass
class Resp:
    status: int
    headers: dict[str, str]
    header_list: list[tuple[bytes, bytes]]
    body: bytes
    http_version: bytes


def parse(raw: bytes, methods: Iterable[str] = ("GET",)) -> tuple[list[Resp], bytes]:
    """Parse consecutive responses with an h11 client; return them and the unparsed rest."""
    out: list[Resp] = []
    rest = raw
    for method in methods:
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method=method, target="/", headers=[("Host", "t")]))
        conn.send(h11.EndOfMessage())
        conn.receive_data(rest)
        response: h11.Response | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(b"")  # the server closed: a close-delimited body ends
                continue
            if isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise AssertionError(f"unexpected {event!r}")
        assert response is not None
        out.append(
            Resp(
                response.status_code,
                {k.decode().lower(): v.decode("latin-1") for k, v in response.headers},
                list(response.headers),
                bytes(body),
                response.http_version,
            )
        )
        rest = conn.trailing_data[0]
    return out, rest


def one(raw: bytes, method: str = "GET") -> Resp:
    responses, rest = parse(raw, [method])
    assert rest == b""
    return responses[0]


