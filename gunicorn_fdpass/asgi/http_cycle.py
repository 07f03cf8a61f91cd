"""One HTTP request-response cycle of the ASGI worker (ASGI HTTP spec 2.4): the scope, the
``receive`` and ``send`` callables, the application call, the hooks and access log, and the
keep-alive decision at the end. Created fresh for every request.

The response goes through the same sans-IO :class:`~gunicorn_fdpass.http.response.Response`
as the WSGI worker's (same header checks, same framing, same ``Connection`` decision); the
request body through the same h11 :class:`~gunicorn_fdpass.http.body_framing.RequestBody`.
"""

from __future__ import annotations

import asyncio
import datetime
import re
import time
from typing import TYPE_CHECKING, Any, Final

from ..http.body_framing import RequestBody
from ..http.keep_alive import After, Next, closes, connection_tokens, decide, request_facts
from ..http.memo import remember
from ..http.request_rules import TOKEN, ParsedRequest, Rejected
from ..http.response import Abort, Response
from ..http.serialize import CONTINUE
from ..worker.api import RequestInfo, request_info
from ..worker.body_reader import MAX_DRAIN
from ..wsgi import HOP_BY_HOP
from .phrases import phrase
from .scope import access_environ, request_http_scope
from .types import ClientDisconnected, Message

if TYPE_CHECKING:
    from .connection import AsgiConnection

__all__ = ["HttpCycle", "response_headers"]

#: Most body bytes one ``http.request`` message carries when more are already there.
BODY_MESSAGE: Final = 256 * 1024
_DISCONNECT: Final = {"type": "http.disconnect"}


def response_headers(headers: Any) -> list[tuple[str, str]]:
    """ASGI response headers (byte pairs) as the WSGI-style strings
    :class:`~gunicorn_fdpass.http.response.Response` sends, checked with the rules of
    :func:`~gunicorn_fdpass.wsgi.validate_headers` (a name is a token, a value has no control
    character). Hop-by-hop fields other than ``Connection`` are dropped: the server owns the
    connection and the framing."""
    converted: list[tuple[str, str]] = []
    names = _NAMES
    for item in headers:
        name, value = item
        if type(value) is not bytes or not _VALUE_RE.fullmatch(value):
            _check_value(name, value)  # raises, but for a clean value of a bytes subclass
        text = names.get(name)
        if text is None:
            text = _name_text(name)
        if text:  # "": a hop-by-hop field
            converted.append((text, value.decode("latin-1")))
    return converted


#: Response header names as text ("" for a hop-by-hop field), by name as sent: an
#: application sends the same few names again and again, checked once. Bounded: names can
#: be anything.
_NAMES: dict[bytes, str] = {}
_MAX_NAMES: Final = 512
_TOKEN_RE: Final = re.compile(TOKEN)  # a field name (RFC 9110 5.1), as requests check it
#: A field value: visible latin-1 characters, space and tab (CR or LF would split the head).
_VALUE_RE: Final = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")


def _name_text(name: object) -> str:
    if not isinstance(name, bytes):
        raise TypeError(f"ASGI header names must be bytes, not {name!r}")
    if not _TOKEN_RE.fullmatch(name):
        raise ValueError(f"invalid header name {name!r}")
    text = name.decode("latin-1")
    if text.lower() in HOP_BY_HOP:
        text = ""
    return remember(_NAMES, bytes(name), text, _MAX_NAMES)


def _check_value(name: object, value: object) -> None:
    if not isinstance(value, bytes):
        raise TypeError(f"ASGI header values must be bytes, not {value!r}")
    if not _VALUE_RE.fullmatch(value):
        # The name only: the value may be sensitive (cookies, tokens).
        raise ValueError(f"invalid value for header {name!r}")


def _no_write(data: bytes) -> None:  # pragma: no cover - ASGI has no write() callable
    raise RuntimeError("write() is a WSGI callable")


class HttpCycle:
    """One request and its response on an :class:`~.connection.AsgiConnection`."""

    def __init__(self, conn: AsgiConnection, request: ParsedRequest, body: RequestBody,
                 tokens: set[str] | None = None) -> None:
        self.conn = conn
        self.request = request
        self.body = body
        if tokens is None:  # else the connection found them already
            tokens = connection_tokens(request.headers)
        self.facts = request_facts(request.version, tokens, request.must_close)
        self.after = After.CONTINUE
        self.response: Response | None = None
        self.complete = False  # the response was sent to its end (or the error instead)
        self.failed = False  # the request body failed: the connection ends
        self.aborted = False
        self.body_delivered = False  # the last http.request message was received
        # The client waits for 100 Continue and nothing asked for the body yet.
        self.continue_due = request.expect_continue and not body.done
        # Done once the response completed or the client went (http.disconnect).
        self._over: asyncio.Future[None] | None = None

    async def run(self) -> Next:
        """Run the application and answer; say what happens to the connection next."""
        conn = self.conn
        side = conn.side
        started = time.monotonic()
        try:
            self.after = side.request_started()
        except Exception:
            conn.log.exception("Error in request_started hook")
            self.after = After.CLOSE
        resp = self.response = Response(
            self.request, self.facts, conn.policy, self.after,
            server_software=conn.http.server_software, log=conn.log,
            unread_body=self._forbids_reuse, write=_no_write,
        )
        scope = request_http_scope(self.request, conn.peers, url_scheme=conn.http.url_scheme,
                                   root_path=conn.config.root_path, state=side.state)
        # What the hooks see of the request, made only for a hook that will look at it.
        req: RequestInfo | None = None
        try:
            if side.pre_request_wanted():
                req = self._request_info()
                side.pre_request(req)
            await conn.app(scope, self.receive, self.send)
            self._after_app()
        except Abort:
            self._abort()
        except Exception as exc:
            self._app_failed(exc)
        if side.access_wanted():
            self._report(req or self._request_info(), resp, started)
        if not closes(self.facts, conn.policy, self.after):
            if self.body.done and self.complete and not (self.failed or conn.gone
                                                         or conn.closing):
                self._take_trailing()  # the usual case, without a coroutine for _settle
            else:
                await self._settle()
        return decide(self.facts, conn.policy, self.after, served=conn.served,
                      others_waiting=side.others_waiting())

    def client_finished(self) -> bool:
        """The client sends nothing more and got its whole answer (the connection then
        closes without lingering)."""
        return self.complete and self._client_stops()

    def _client_stops(self) -> bool:
        """The client sends nothing more: it asked to close, its request was read to its
        end, and nothing follows it."""
        return (self.facts.client_close and self.body.done and not self.failed
                and not self.conn.buf)

    def _request_info(self) -> RequestInfo:
        conn = self.conn
        return request_info(self.request, conn.http.url_scheme, conn.client_addr)

    # -- receive -----------------------------------------------------------------------------

    async def receive(self) -> Message:
        """ASGI ``receive``: the request body in ``http.request`` messages, then (once the
        response is complete or the client went away) ``http.disconnect``."""
        if self.complete or self.failed or self.conn.gone:
            return dict(_DISCONNECT)
        if self.body_delivered:
            # Nothing more to read: what a framework listening for the client going away
            # waits on. The client's EOF counts, as it does for other ASGI servers.
            await self._until_over()
            return dict(_DISCONNECT)
        if self.continue_due:
            self.continue_due = False
            resp = self.response
            if resp is None or not resp.committed:
                try:
                    self.conn.write(CONTINUE)
                except ClientDisconnected:
                    return dict(_DISCONNECT)
        data = await self.read_body()
        if data is None:
            return dict(_DISCONNECT)
        self.body_delivered = self.body.done
        return {"type": "http.request", "body": data, "more_body": not self.body.done}

    async def read_body(self) -> bytes | None:
        """What is there of the body (waiting for some if nothing is), at most about
        BODY_MESSAGE bytes; b"" at its end, None if it failed (the connection ends)."""
        conn = self.conn
        body = self.body
        pieces: list[bytes] = []
        size = 0
        while size < BODY_MESSAGE:
            try:
                data = body.next_data()
            except Rejected as exc:
                self._body_failed(f"invalid body: {exc.reason}", exc.status_hint)
                return None
            if data == b"":
                break  # the end of the body
            if data is not None:
                pieces.append(data)
                size += len(data)
                continue
            # h11 needs more: from what was read already, else from the socket, and never
            # more than it may take (for a Content-Length body: not past its end).
            if conn.buf:
                wants = body.wants()
                body.receive(bytes(conn.buf[:wants]))
                del conn.buf[:wants]
                conn.resume_if_drained()
                continue
            if pieces:
                break  # deliver what there is rather than wait
            if conn.gone or conn.eof:
                error = body.eof_error()
                self._body_failed("client closed the connection in the request body",
                                  error.status_hint if error is not None else None)
                return None
            if conn.expired:
                self._body_failed("timed out reading the request body")
                return None
            await conn.wait_body()
        return b"".join(pieces)

    def _forbids_reuse(self) -> bool:
        """Asked when the response head is written: does what is left of the body already
        rule out another request on this connection?"""
        if self.continue_due:
            # The body was never asked for: the client may or may not send it now.
            return True
        remaining = self.body.remaining
        return remaining is not None and remaining > MAX_DRAIN

    def _body_failed(self, message: str, status_hint: int | None = None) -> None:
        conn = self.conn
        self.failed = True
        self.facts.broken = True
        if status_hint is not None:
            conn.log.warning("Invalid request body from %s: %s", conn.client_addr, message)
            self._send_error(status_hint)
        else:
            conn.log.debug("Request body from %s: %s", conn.client_addr, message)

    async def _until_over(self) -> None:
        await self.conn.on_loop()  # the client's EOF is seen there
        if self.complete or self.conn.gone or self.conn.eof:
            return
        self._over = asyncio.get_running_loop().create_future()
        try:
            await self._over
        finally:
            self._over = None

    def client_gone(self) -> None:
        """The client sent EOF or the connection closed under the request."""
        self._end_wait()

    def _end_wait(self) -> None:
        over = self._over
        if over is not None and not over.done():
            over.set_result(None)

    # -- send --------------------------------------------------------------------------------

    async def send(self, message: Message) -> None:
        """ASGI ``send``: ``http.response.start`` then ``http.response.body`` messages."""
        conn = self.conn
        resp = self.response
        assert resp is not None
        if conn.gone or self.failed:
            raise ClientDisconnected("the client went away")
        kind = message["type"]
        if kind == "http.response.start":
            if resp.starter.started:
                raise RuntimeError("http.response.start sent twice")
            status = message["status"]
            if not isinstance(status, int) or isinstance(status, bool):
                raise TypeError(f"ASGI status must be an int, not {status!r}")
            if not 100 <= status <= 999:
                raise ValueError(f"invalid ASGI status {status!r}")
            resp.start(status, phrase(status), response_headers(message.get("headers", ())))
            # A final status before the body was asked for: no 100 Continue any more
            # (RFC 9110 10.1.1); the head, and with it Connection: close, says the rest.
        elif kind == "http.response.body":
            if not resp.starter.started:
                raise RuntimeError("http.response.body before http.response.start")
            if resp.ended:
                raise RuntimeError("http.response.body after the response ended")
            more = bool(message.get("more_body", False))
            try:
                resp.body(message.get("body", b""))
                if not more:
                    resp.finish()
            except Abort:
                self.aborted = True
                raise
            self._flush(last=not more and self._client_stops())
            if not more:
                self.complete = True
                self._end_wait()
            if conn.write_paused or conn.gone:  # else drain() has nothing to wait for
                await conn.drain()
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} for an HTTP request")

    def _flush(self, last: bool = False) -> None:
        """Write what the response has ready; ``last``: nothing follows on the connection
        (the FIN may then leave with these bytes)."""
        resp = self.response
        assert resp is not None
        data = resp.take()
        if last:
            self.conn.write_last(data)
        elif data:
            self.conn.write(data)
        resp.sent()

    # -- the end of the exchange -----------------------------------------------------------

    def _after_app(self) -> None:
        resp = self.response
        assert resp is not None
        if self.aborted:
            self._abort()
        elif self.complete or self.failed or self.conn.gone:
            return
        elif not resp.starter.started:
            self.conn.log.error("ASGI application returned without a response to %s",
                                self.request.target)
            self._send_error(500)
        else:
            self.conn.log.error("ASGI application returned before the end of its response "
                                "to %s: closing the connection", self.request.target)
            if resp.committed:
                self._abort()
            else:
                self._send_error(500)

    def _app_failed(self, exc: Exception) -> None:
        conn = self.conn
        resp = self.response
        assert resp is not None
        if conn.gone or self.failed or isinstance(exc, ClientDisconnected):
            # The client went away (or sent a broken body): what the application raised
            # about it is no server error.
            conn.log.debug("Client %s went away: %r", conn.client_addr, exc)
            self.facts.broken = True
            return
        conn.log.exception("Error handling request %s", self.request.target)
        if self.complete:
            return  # the response is whole: the client got what it was promised
        if resp.committed:
            self._abort()
        else:
            self._send_error(500)

    def _send_error(self, status_code: int) -> None:
        """The server's own answer instead of the application's (and the connection ends)."""
        resp = self.response
        assert resp is not None
        data = resp.error(status_code)
        self.complete = True
        self._end_wait()
        if data:
            try:
                self.conn.write(data)
                resp.sent()
            except ClientDisconnected:
                pass

    def _abort(self) -> None:
        """The response cannot be completed: the client must see a truncated message."""
        self.facts.broken = True
        self.complete = True
        self._end_wait()
        try:
            self._flush()
        except ClientDisconnected:
            pass
        self.conn.abort()

    def _report(self, req: RequestInfo, resp: Response, started: float) -> None:
        """The ``post_request`` hook and the access log (when wanted: see run)."""
        conn = self.conn
        side = conn.side
        info = resp.final_info()
        environ = access_environ(self.request, client=conn.client_addr,
                                 server=conn.server_addr, proxy=conn.proxy,
                                 url_scheme=conn.http.url_scheme,
                                 root_path=conn.config.root_path,
                                 server_software=conn.http.server_software)
        try:
            side.post_request(req, environ, info)
        except Exception:
            conn.log.exception("Error in post_request hook")
        if info.status:
            try:
                elapsed = datetime.timedelta(seconds=time.monotonic() - started)
                side.access(info, req, environ, elapsed)
            except Exception:
                conn.log.exception("Error in access hook")

    async def _settle(self) -> None:
        """After a complete response on a connection that stays: read what the application
        left of the body (bounded), so the next request starts where this one ended."""
        conn = self.conn
        if not self.complete or self.failed or conn.gone or conn.closing:
            self.facts.broken = True
            return
        budget = MAX_DRAIN
        while not self.body.done:
            data = await self.read_body()
            if data is None:
                self.facts.broken = True
                return
            budget -= len(data)
            if budget < 0:
                conn.log.debug("Large unread request body from %s: closing", conn.client_addr)
                self.facts.broken = True
                return
        self._take_trailing()

    def _take_trailing(self) -> None:
        """The body was read to its end: what h11 read past it is the next request's start."""
        trailing = self.body.trailing()
        if trailing is None:
            self.facts.broken = True
        elif trailing:
            self.conn.buf[:0] = trailing
