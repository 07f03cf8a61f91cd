"""A WebSocket connection of the ASGI worker (ASGI WebSocket spec 2.4), with wsproto.

The request head was read and checked like any other (h11 behind Gunicorn's rules); it asks
for an Upgrade, so the connection now belongs to wsproto: it checks the handshake fields and
writes the ``101``, then frames and unframes messages. What this module adds:

- the ASGI side: ``websocket.connect``, ``receive``/``send`` of text and binary messages,
  ``websocket.close`` before the handshake (``403``) or after it, the denial response
  extension (``websocket.http.response.*``), ``websocket.disconnect`` with the close code;
- fragmented messages joined, pings answered, a close frame answered and the TCP
  connection closed after it;
- limits: a message larger than ``--websocket-max-message-size`` closes with 1009;
  messages the application has not received yet stop the reading (back-pressure);
- :meth:`WebSocketSession.shutdown`: a graceful stop of the worker closes with 1001.

A WebSocket stays in its worker for its whole life, and counts as one of its connections.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Final

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from ..http.request_rules import ParsedRequest
from ..http.response import ResponseInfo
from ..worker.api import request_info
from .phrases import phrase
from .scope import access_environ, websocket_scope
from .types import ClientDisconnected, Message

if TYPE_CHECKING:
    from .connection import AsgiConnection

__all__ = ["WebSocketSession"]

#: Bytes of received messages the application has not taken yet above which the connection
#: stops reading, so a client cannot fill the worker's memory faster than the app consumes.
_QUEUE_HIGH: Final = 1024 * 1024
#: Seconds we wait for the client to answer our close frame before closing the connection.
_CLOSE_WAIT: Final = 5.0
_ABNORMAL: Final = 1006
_TOO_BIG: Final = 1009
_INTERNAL_ERROR: Final = 1011
#: The code a graceful stop of the worker closes WebSockets with.
GOING_AWAY: Final = 1001


def _byte_headers(headers: Any) -> list[tuple[bytes, bytes]]:
    pairs = [(bytes(name), bytes(value)) for name, value in headers]
    for name, value in pairs:
        if b"\r" in name + value or b"\n" in name + value:
            raise ValueError(f"invalid header {name!r}")
    return pairs


class WebSocketSession:
    """The ASGI websocket connection scope on one client connection."""

    def __init__(self, conn: AsgiConnection, head: bytes, request: ParsedRequest) -> None:
        self.conn = conn
        self.head = head
        self.request = request
        self.ws = WSConnection(ConnectionType.SERVER)
        self.feeding = False  # accepted: received bytes are frames for wsproto
        self.answered = False  # the handshake was answered (101, or a refusal)
        self.status = 0
        self.sent = 0  # body bytes of a denial response
        self.close_code: int | None = None  # set once the WebSocket is over for the app
        self._inbox: deque[Message] = deque([{"type": "websocket.connect"}])
        self._queued = 0
        self._waiter: asyncio.Future[None] | None = None
        self._parts: list[Any] = []
        self._part_size = 0
        self._max = conn.config.ws_max_message

    # -- the session -------------------------------------------------------------------------

    async def run(self) -> None:
        """Check the handshake, run the application, end the connection."""
        conn = self.conn
        try:
            self.ws.receive_data(self.head)
            event = next(self.ws.events(), None)
            if not isinstance(event, Request):
                raise RemoteProtocolError("no handshake request", event_hint=None)
        except RemoteProtocolError as exc:
            conn.log.warning("Invalid WebSocket handshake from %s: %s", conn.client_addr, exc)
            conn.send_error(400)
            conn.close()
            return
        side = conn.side
        scope = websocket_scope(self.request, client=conn.client_addr, server=conn.server_addr,
                                proxy=conn.proxy, url_scheme=conn.http.url_scheme,
                                root_path=conn.config.root_path, state=side.state)
        scope["extensions"] = {"websocket.http.response": {}}
        req = request_info(self.request, conn.http.url_scheme, conn.client_addr)
        started = time.monotonic()
        try:
            side.request_started()
            side.pre_request(req)
            await conn.app(scope, self.receive, self.send)
            self._after_app()
        except Exception as exc:
            self._app_failed(exc)
        await self._end()
        self._report(req, started)

    def _after_app(self) -> None:
        if not self.answered:
            self._refuse(403)  # the application returned without accepting
        elif self.status == 101:
            self._close_frame(1000, None)
        elif self.ws.state is ConnectionState.REJECTING:
            self.conn.abort()  # a denial response cut short

    def _app_failed(self, exc: Exception) -> None:
        conn = self.conn
        if conn.gone or isinstance(exc, ClientDisconnected):
            conn.log.debug("WebSocket client %s went away: %r", conn.client_addr, exc)
            return
        conn.log.exception("Error handling WebSocket %s", self.request.target)
        if not self.answered:
            self._refuse(500)
        elif self.status == 101:
            self._close_frame(_INTERNAL_ERROR, None)
        else:
            conn.abort()

    async def _end(self) -> None:
        """Wait (bounded) for the client to answer our close frame, then close."""
        conn = self.conn
        if self.ws.state is ConnectionState.LOCAL_CLOSING and not conn.gone:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(self._waiter, _CLOSE_WAIT)
            except asyncio.TimeoutError:
                pass
            finally:
                self._waiter = None
        conn.close()

    def _report(self, req: Any, started: float) -> None:
        conn = self.conn
        side = conn.side
        if not self.status or not side.access_wanted():
            return
        info = ResponseInfo(f"{self.status} {phrase(self.status)}", self.status, [], self.sent)
        environ = access_environ(self.request, client=conn.client_addr,
                                 server=conn.server_addr, proxy=conn.proxy,
                                 url_scheme=conn.http.url_scheme,
                                 root_path=conn.config.root_path,
                                 server_software=conn.http.server_software)
        try:
            side.post_request(req, environ, info)
            side.access(info, req, environ,
                        datetime.timedelta(seconds=time.monotonic() - started))
        except Exception:
            conn.log.exception("Error in post_request or access hook")

    # -- ASGI receive ------------------------------------------------------------------------

    async def receive(self) -> Message:
        """``websocket.connect``, then the client's messages, then ``websocket.disconnect``."""
        while not self._inbox:
            if self.close_code is not None:
                return {"type": "websocket.disconnect", "code": self.close_code}
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        message = self._inbox.popleft()
        self._queued -= message.get("size", 0)
        message.pop("size", None)
        if self._queued < _QUEUE_HIGH // 2:
            self.conn.resume_if_drained()
        return message

    def _deliver(self, message: Message, size: int = 0) -> None:
        if size:
            message["size"] = size  # removed before the application sees it
            self._queued += size
            if self._queued > _QUEUE_HIGH:
                self.conn.pause_reading()
        self._inbox.append(message)
        self._wake()

    def _disconnected(self, code: int, reason: str | None = None) -> None:
        if self.close_code is None:
            self.close_code = code
            self._deliver({"type": "websocket.disconnect", "code": code, "reason": reason or ""})

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- frames from the client --------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Bytes from the client, after the handshake."""
        try:
            self.ws.receive_data(data)
        except LocalProtocolError:
            return  # closed already: nothing more is read
        for event in self.ws.events():
            if isinstance(event, (TextMessage, BytesMessage)):
                self._part(event)
            elif isinstance(event, Ping):
                self._write(self.ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                self._client_closed(event)

    def _part(self, event: TextMessage | BytesMessage) -> None:
        if self.close_code is not None:
            return
        self._parts.append(event.data)
        self._part_size += len(event.data)
        if self._max and self._part_size > self._max:
            self._parts = []
            self._close_frame(_TOO_BIG, "message too big")
            self._disconnected(_TOO_BIG)
            return
        if not event.message_finished:
            return
        parts, size = self._parts, self._part_size
        self._parts, self._part_size = [], 0
        if isinstance(event, TextMessage):
            self._deliver({"type": "websocket.receive", "text": "".join(parts)}, size)
        else:
            self._deliver({"type": "websocket.receive", "bytes": b"".join(parts)}, size)

    def _client_closed(self, event: CloseConnection) -> None:
        state = self.ws.state
        if state is ConnectionState.REMOTE_CLOSING:
            self._write(self.ws.send(event.response()))  # our answering close frame
        elif state is ConnectionState.OPEN:
            # wsproto could not parse a frame: it names the code; we close with it.
            self._close_frame(event.code, event.reason)
        self._disconnected(event.code, event.reason)
        self._wake()
        if self.ws.state is ConnectionState.CLOSED:
            self.conn.close()

    def client_eof(self) -> None:
        """The client shut its side without a close frame."""
        self._disconnected(_ABNORMAL)

    def client_gone(self) -> None:
        """The TCP connection closed."""
        self._disconnected(_ABNORMAL)
        self._wake()

    def shutdown(self) -> None:
        """A graceful stop: close the WebSocket with 1001 (going away)."""
        if self.status == 101 and self.ws.state is ConnectionState.OPEN:
            self._close_frame(GOING_AWAY, "server shutting down")
            self._disconnected(GOING_AWAY)

    # -- ASGI send ---------------------------------------------------------------------------

    async def send(self, message: Message) -> None:
        """``websocket.accept``, ``.send``, ``.close`` and the denial response messages."""
        kind = message["type"]
        if self.conn.gone:
            raise ClientDisconnected("the client went away")
        if kind == "websocket.accept":
            self._accept(message)
        elif kind == "websocket.send":
            if self.status != 101:
                raise RuntimeError("websocket.send before websocket.accept")
            if self.close_code is not None or self.ws.state is not ConnectionState.OPEN:
                raise ClientDisconnected("the WebSocket is closed")
            text = message.get("text")
            if text is not None:
                self._write(self.ws.send(TextMessage(data=str(text))))
            else:
                self._write(self.ws.send(BytesMessage(data=bytes(message.get("bytes") or b""))))
            if self.conn.closing:
                raise ClientDisconnected("the WebSocket is closed")
            await self.conn.drain()
        elif kind == "websocket.close":
            if not self.answered:
                self._refuse(403)
            elif self.status == 101:
                self._close_frame(int(message.get("code", 1000)), message.get("reason"))
                self._disconnected(int(message.get("code", 1000)))
        elif kind == "websocket.http.response.start":
            if self.answered:
                raise RuntimeError("websocket.http.response.start after the handshake")
            self.answered = True
            self.status = int(message["status"])
            self._write(self.ws.send(RejectConnection(
                status_code=self.status, headers=_byte_headers(message.get("headers", ())),
                has_body=True)))
        elif kind == "websocket.http.response.body":
            if self.ws.state is not ConnectionState.REJECTING:
                raise RuntimeError("websocket.http.response.body without a response start")
            body = bytes(message.get("body", b""))
            more = bool(message.get("more_body", False))
            self.sent += len(body)
            self._write(self.ws.send(RejectData(data=body, body_finished=not more)))
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} for a WebSocket")

    def _accept(self, message: Message) -> None:
        if self.answered:
            raise RuntimeError("websocket.accept after the handshake was answered")
        data = self.ws.send(AcceptConnection(
            subprotocol=message.get("subprotocol"),
            extra_headers=_byte_headers(message.get("headers", ()))))
        self.answered = True
        self.status = 101
        self._write(data)
        self.feeding = True
        conn = self.conn
        if conn.buf:  # frames the client sent right behind its handshake
            early = bytes(conn.buf)
            conn.buf.clear()
            self.feed(early)

    def _refuse(self, status: int) -> None:
        """Answer the handshake with the server's own error page (403: the application
        closed before accepting; 500: it failed)."""
        self.answered = True
        self.status = status
        self.conn.send_error(status)
        self._disconnected(_ABNORMAL if status >= 500 else 1000)

    def _close_frame(self, code: int, reason: str | None) -> None:
        if self.ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            self._write(self.ws.send(CloseConnection(code=code, reason=reason)))

    def _write(self, data: bytes) -> None:
        """Send frames; on a connection already ending they are dropped (``send`` then raises
        :class:`ClientDisconnected` for the application)."""
        conn = self.conn
        if conn.gone or conn.closing:
            self._disconnected(_ABNORMAL)
            return
        conn.write(data)

