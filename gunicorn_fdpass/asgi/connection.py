"""One client connection of the ASGI worker: an asyncio protocol that drives the sans-IO HTTP
layer of :mod:`gunicorn_fdpass.http`, the same as the WSGI worker's blocking loop does.

:class:`AsgiConnection` holds what lives as long as the connection: the transport, the bytes
received and not yet used, the client's EOF, its address and PROXY header. Its
:meth:`~AsgiConnection.serve` task reads request heads (:func:`find_head_end`, then
:func:`receive_head`: h11 behind Gunicorn's rules), runs each request's
:class:`~gunicorn_fdpass.asgi.http_cycle.HttpCycle` (or, for an Upgrade to WebSocket, a
:class:`~gunicorn_fdpass.asgi.websocket.WebSocketSession`), and ends with the keep-alive
decision: serve the next request here, hand the idle connection back to the master, or close.

Waiting is bounded without a timer per wait: the worker calls :meth:`~AsgiConnection.tick`
a few times a second, which ends a wait that has lasted too long (an idle keep-alive
connection after ``FDPASS_ASGI_IDLE``, a stalled client after the I/O timeout).
"""

from __future__ import annotations

import asyncio
import socket
import time
from enum import Enum
from typing import TYPE_CHECKING, Any, Final, cast

from ..http import proxy_protocol
from ..http.body_framing import RequestBody
from ..http.keep_alive import Next, connection_tokens
from ..http.proxy_protocol import ProxyInfo
from ..http.request_head import receive_head
from ..http.request_rules import ParsedRequest, Rejected, find_head_end
from ..http.serialize import error_message
from ..link.messages import MAX_PAYLOAD
from .api import WorkerSide
from .config import AsgiConfig
from .direct import DirectTransport, ready_bytes, send_last, shut_write
from .http_cycle import HttpCycle
from .scope import Peers, peers
from .types import ASGIApp, ClientDisconnected

if TYPE_CHECKING:
    from .websocket import WebSocketSession

__all__ = ["AsgiConnection", "is_websocket_request"]

#: Received bytes the application has not asked for yet (a request body it reads slowly,
#: pipelined requests) above which the connection stops reading: back-pressure to the client.
HIGH_WATER: Final = 256 * 1024
#: ... and below which it reads again.
LOW_WATER: Final = 64 * 1024
#: After our FIN, bytes the client still sends that we read and drop before closing: closing
#: with unread data makes the kernel send RST, which can destroy the response in flight.
_MAX_DISCARD: Final = 256 * 1024
#: Seconds we wait for the client's EOF after our FIN before closing anyway.
_CLOSE_WAIT: Final = 2.0


class Wait(Enum):
    """What a connection is waiting for (each with its own time limit, see ``tick``)."""

    HEAD = "a request head"  # the first one, longer than the master's peek
    IDLE = "the next request"  # keep-alive: limit FDPASS_ASGI_IDLE (TLS: --keep-alive)
    BODY = "the request body"  # limit: the I/O timeout
    CLOSE = "the client's EOF"  # after our FIN


def is_websocket_request(request: ParsedRequest) -> bool:
    """An HTTP/1.1 GET asking to upgrade to WebSocket (wsproto checks the rest)."""
    return _fields(request)[1]


#: The Connection options of a request without that field (only ever read).
_NO_TOKENS: Final[set[str]] = set()


def _fields(request: ParsedRequest) -> tuple[set[str], bool]:
    """The request's ``Connection`` options (lower case) and whether it asks to upgrade to
    WebSocket (:func:`is_websocket_request`), from one pass over its fields: most requests
    have neither field."""
    connection = upgrade = False
    for name, value in request.headers:
        if name == "CONNECTION":
            connection = True
        elif name == "UPGRADE" and "websocket" in value.lower():
            upgrade = True
    tokens = connection_tokens(request.headers) if connection else _NO_TOKENS
    websocket = (upgrade and "upgrade" in tokens and request.method == "GET"
                 and request.version >= (1, 1))
    return tokens, websocket


class AsgiConnection(asyncio.Protocol):
    """One client connection, from the handoff to its end (closed or handed back)."""

    def __init__(self, conn_id: int, family: int, prefix: bytes, app: ASGIApp,
                 config: AsgiConfig, side: WorkerSide, log: Any,
                 loop: asyncio.AbstractEventLoop | None = None,
                 sock: socket.socket | None = None) -> None:
        self.conn_id = conn_id
        self.family = family
        self.app = app
        self.config = config
        self.http = config.http
        self.rules = config.http.rules
        self.policy = config.policy
        self.side = side
        self.log = log
        self.buf = bytearray(prefix)  # received, not yet part of a request
        self.transport: asyncio.Transport = cast(asyncio.Transport, None)
        #: The socket the transport was made from, when the worker gives it: a closing
        #: connection then shuts it without waiting for the transport (see close).
        self.sock = sock
        #: Until the connection first waits: the transport that writes straight to the socket
        #: (see :mod:`.direct` and :meth:`on_loop`).
        self.direct: DirectTransport | None = None
        self._moving: asyncio.Task[None] | None = None
        #: The worker's loop (else the running one, found in connection_made).
        self.loop: asyncio.AbstractEventLoop = cast(asyncio.AbstractEventLoop, loop)
        #: The peer's and our address (connection_made asks the transport).
        self.client_addr: Any = None
        self.server_addr: Any = None
        self.trusted = False
        self.plain = True  # no TLS: the connection may go back to the master
        self.proxy: ProxyInfo | None = None
        #: ``client`` and ``server`` of this connection's scopes (once the PROXY header, if
        #: any, was read).
        self.peers = Peers(None, None)
        self.served = 0
        self.eof = False  # the client shut its sending side
        self.gone = False  # the transport is closed (connection_lost)
        self.closing = False  # we are ending it (FIN sent or about to be)
        self.handed_back = False  # it went back to the master with Park
        self.fin_sent = False  # our FIN left with the last response (write_last)
        self.expired = False  # the current wait lasted too long (see tick)
        self.websocket: WebSocketSession | None = None
        self.cycle: HttpCycle | None = None
        self._read_paused = False
        #: The transport's buffer is over its limit: wait in :meth:`drain` before writing on.
        self.write_paused = False
        self._reader: asyncio.Future[None] | None = None
        self._drainer: asyncio.Future[None] | None = None
        self._waiting: Wait | None = None
        self._read_since = 0.0
        self._write_since = 0.0
        self._discarded = 0

    # -- asyncio protocol callbacks ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.direct is not None:
            return  # the loop's transport, taken over in order by _move
        if isinstance(transport, DirectTransport):
            self.direct = transport
        self.transport = cast(asyncio.Transport, transport)
        if self.loop is None:
            # asyncio.get_running_loop() makes a getpid() system call: the worker passes
            # its loop instead.
            self.loop = asyncio.get_running_loop()
        self.client_addr = transport.get_extra_info("peername")
        self.server_addr = transport.get_extra_info("sockname")
        self.plain = transport.get_extra_info("sslcontext") is None
        # Per connection, not per request: the peer cannot change.
        self.trusted = self.rules.forwarded_allow.allows(self.client_addr)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            self._discarded += len(data)
            if self._discarded > _MAX_DISCARD:
                self.transport.close()
            return
        if self.websocket is not None and self.websocket.feeding:
            self.websocket.feed(data)
            return
        self.buf += data
        if len(self.buf) > HIGH_WATER and not self._read_paused:
            self._read_paused = True
            self.transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool:
        self.eof = True
        if self.closing:
            return False  # asyncio closes the transport: our side is done too
        if self.websocket is not None:
            self.websocket.client_eof()
        if self.cycle is not None:
            self.cycle.client_gone()
        self._wake_reader()
        # Keep our sending side open: an HTTP/1.0 client may half-close after its request
        # and still read the response (a TLS transport ignores this and closes).
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.gone = True
        self._wake_reader()
        self._wake_drainer()
        if self.cycle is not None:
            self.cycle.client_gone()
        if self.websocket is not None:
            self.websocket.client_gone()
        self.side.ended(self)

    def pause_writing(self) -> None:
        self.write_paused = True
        self._write_since = time.monotonic()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake_drainer()

    # -- the connection's task ---------------------------------------------------------------

    async def serve(self) -> None:
        """Serve requests until the connection ends or goes back to the master."""
        try:
            if self.http.proxy_protocol != "off" and not await self._read_proxy_header():
                return
            self.peers = peers(self.client_addr, self.server_addr, self.proxy)
            while not self.closing and not self.gone:
                got = await self._next_request()
                if got is None:
                    return
                head, request, body = got
                self.served += 1
                tokens, websocket = _fields(request)
                if websocket:
                    await self.on_loop()  # frames arrive as the loop reads them
                    await self._websocket(head, request)
                    return
                cycle = self.cycle = HttpCycle(self, request, body, tokens)
                fate = await cycle.run()
                self.cycle = None
                if fate is Next.CLOSE:
                    self.close(linger=not cycle.client_finished())
                    return
                if fate is Next.HAND_BACK:
                    await self.hand_back()
                    return
        except Exception:
            self.log.exception("Error serving connection")
            self.abort()

    async def _websocket(self, head: bytes, request: ParsedRequest) -> None:
        try:
            # wsproto is the optional part of the ASGI support (the "asgi" extra).
            from .websocket import WebSocketSession
        except ImportError as exc:
            self.log.error("WebSocket request, but %s: pip install 'gunicorn-fdpass[asgi]'",
                           exc)
            self.send_error(501)
            self.close()
            return
        self.websocket = WebSocketSession(self, head, request)
        await self.websocket.run()

    async def _read_proxy_header(self) -> bool:
        """Consume a PROXY header (or our resume marker) at the start; False: ended."""
        allowed = self.http.proxy_allow.allows(self.client_addr)
        while True:
            try:
                known, proxy = proxy_protocol.take_header(
                    self.buf, self.http.proxy_protocol, allowed)
            except Rejected as exc:
                self._reject(exc)
                return False
            if known:
                self.proxy = proxy
                return True
            if self.gone or self.eof or self.expired:
                self.close()
                return False
            await self.wait_readable(Wait.HEAD)

    async def _next_request(self) -> tuple[bytes, ParsedRequest, RequestBody] | None:
        """The next request head, parsed; None once the connection ended or went back."""
        scanned = 0
        idle = Wait.IDLE if self.served else Wait.HEAD
        while True:
            if self.buf:
                try:
                    end = find_head_end(self.buf, self.rules, scanned)
                    if end >= 0:
                        if end == len(self.buf):  # the usual case: nothing pipelined
                            head = bytes(self.buf)
                            self.buf.clear()
                        else:
                            head = bytes(self.buf[:end])
                            del self.buf[:end]
                        if self._read_paused:
                            self.resume_if_drained()
                        request, body = receive_head(head, self.rules, trusted=self.trusted)
                        return head, request, body
                except Rejected as exc:
                    self._reject(exc)
                    return None
                scanned = len(self.buf)
            if self.gone:
                return None
            if self.eof:
                self.close()
                return None
            if idle is Wait.IDLE and (self.expired or self.config.idle <= 0
                                      or self.side.stopping() or self.side.others_waiting()):
                await self.hand_back()
                return None
            if self.expired:
                self.log.debug("Timed out waiting for a request from %s", self.client_addr)
                if self.buf:
                    self.send_error(408)  # it had started: tell the client why we hang up
                self.close()
                return None
            await self.wait_readable(idle)

    # -- reading and writing, for the request cycle and the WebSocket session ---------------

    async def wait_readable(self, why: Wait) -> None:
        """Wait for bytes, EOF, the end of the connection, or the end of the wait's time."""
        if self.direct is not None:
            await self.on_loop()
            return  # bytes may have come during the move: the caller looks again
        self.expired = False
        if self._read_paused:
            self._read_paused = False
            self.transport.resume_reading()
        self._waiting = why
        self._read_since = time.monotonic()
        self._reader = self.loop.create_future()
        try:
            await self._reader
        finally:
            self._reader = None
            self._waiting = None

    async def wait_body(self) -> None:
        """Wait for more of a request body (at most the I/O timeout: then ``expired``)."""
        await self.wait_readable(Wait.BODY)

    def pause_reading(self) -> None:
        """Stop reading until :meth:`resume_if_drained` (back-pressure)."""
        if not self._read_paused and not self.gone:
            self._read_paused = True
            self.transport.pause_reading()

    def resume_if_drained(self) -> None:
        """Read again once the application consumed what was received."""
        if self._read_paused and len(self.buf) < LOW_WATER and not self.gone:
            self._read_paused = False
            self.transport.resume_reading()

    def write(self, data: bytes) -> None:
        """Queue ``data`` on the transport; :class:`ClientDisconnected` once it is closed."""
        if self.gone or self.closing:
            raise ClientDisconnected("the client went away")
        self.transport.write(data)

    def write_last(self, data: bytes) -> None:
        """Write the connection's last bytes (:meth:`close` follows) and, when they all go
        out at once, our FIN in the same segment: one packet fewer for both ends. Otherwise
        as :meth:`write`."""
        sock = self.sock
        if (sock is None or not self.plain or self.gone or self.closing
                or self.transport.get_write_buffer_size()):
            if data:
                self.write(data)
            return
        sent, self.fin_sent = send_last(sock, data)
        if sent < len(data):
            # The rest goes behind what left, through the transport (no early FIN then).
            self.transport.write(data[sent:] if sent > 0 else data)

    async def drain(self) -> None:
        """Wait while the transport's buffer is over its limit (the client reads slowly)."""
        if self.direct is not None:
            await self.on_loop()  # it sends what the socket did not take
        if self.write_paused and not self.gone:
            self._drainer = self.loop.create_future()
            try:
                await self._drainer
            finally:
                self._drainer = None
        if self.gone:
            raise ClientDisconnected("the client went away")

    def send_error(self, status_code: int) -> None:
        """Answer a request that could not be served, before any response to it began."""
        if not self.gone and not self.closing:
            self.transport.write(error_message(status_code, self.http.server_software).data)

    def _reject(self, exc: Rejected) -> None:
        # Gunicorn logs refused requests as warnings too ("Invalid request from ip=...").
        self.log.warning("Invalid request from %s: %s", self.client_addr, exc.reason)
        self.send_error(exc.status_hint)
        self.close()

    # -- the end of the connection -------------------------------------------------------------

    async def hand_back(self) -> None:
        """Give the idle connection back to the master, with the bytes already read; close
        it instead if it cannot go back (TLS, too many leftover bytes)."""
        leftover = bytes(self.buf)
        if self.http.proxy_protocol != "off":
            # What the PROXY header said must survive the connection being parked.
            leftover = proxy_protocol.resume_marker(self.proxy) + leftover
        if not (self.policy.parkable and self.plain) or len(leftover) > MAX_PAYLOAD:
            self.close()
            return
        if self.direct is not None and self.direct.get_write_buffer_size():
            await self.on_loop()  # it sends what the socket did not take
        transport = self.transport
        transport.pause_reading()
        if transport.get_write_buffer_size():
            # The last response must be out before the socket leaves: with a zero limit the
            # transport says so (resume_writing) once its buffer is empty.
            self.write_paused = True
            self._write_since = time.monotonic()
            transport.set_write_buffer_limits(high=0)
            try:
                await self.drain()
            except ClientDisconnected:
                return
        if self.gone:
            return
        if self.side.hand_back(self, leftover):
            self.handed_back = True
            self.closing = True
            transport.abort()  # closes our fd only; the master kept its own
        else:
            self.close()

    def close(self, linger: bool = True) -> None:
        """End the connection in order: our FIN after the last response, then (unless the
        client already sent EOF) read and drop what it still sends until its EOF, so that
        closing does not reset the connection under the response.

        ``linger=False``: the client said it sends nothing more (its last request asked to
        close and was read to its end). Then, once the response is out, the FIN goes at once
        and the connection closes unless bytes are waiting after all, as the WSGI worker
        does: no wait for the client's EOF."""
        if self.gone or self.closing:
            return
        self.closing = True
        transport = self.transport
        if self.eof or not self.plain or not transport.can_write_eof():
            transport.close()
            return
        if not linger and not self.buf and (self.fin_sent or self._shut_now()):
            if not self._still_sending():
                transport.close()
                return
        elif not self.fin_sent:
            transport.write_eof()
        if self.direct is not None:
            self.move_soon()  # what the client still sends is read there, until its EOF
        self.buf.clear()
        self._waiting = Wait.CLOSE
        self._read_since = time.monotonic()
        if self._read_paused:
            self._read_paused = False
            transport.resume_reading()

    def _shut_now(self) -> bool:
        """Our FIN now, on the socket itself (the transport would send it one loop turn
        later); False if that is not possible here (no socket, a response still queued)."""
        sock = self.sock
        return (sock is not None and not self.transport.get_write_buffer_size()
                and shut_write(sock))

    def _still_sending(self) -> bool:
        """After our FIN: does the client still send (bytes already waiting)? Reads once."""
        sock = self.sock
        assert sock is not None
        # b"": nothing waiting (the usual case), the client's EOF, or a reset: in each, the
        # connection can close now.
        self._discarded = len(ready_bytes(sock))
        return self._discarded > 0

    # -- the move to the event loop ----------------------------------------------------------

    async def on_loop(self) -> None:
        """Move the connection from its :class:`DirectTransport` to a transport of the event
        loop (which reads, and waits for room to write); at once if it is there already."""
        if self.direct is not None:
            self.move_soon()
            assert self._moving is not None
            await asyncio.shield(self._moving)

    def move_soon(self) -> None:
        """Start the move to the event loop (the direct transport's ``on_blocked``)."""
        if self._moving is None and self.direct is not None:
            self._moving = self.loop.create_task(self._move(self.direct))

    async def _move(self, direct: DirectTransport) -> None:
        sock = self.sock
        assert sock is not None  # a direct transport is made from it
        if not direct.begin_move():
            return  # it ended on the direct transport: connection_lost follows
        try:
            transport, _ = await self.loop.connect_accepted_socket(lambda: self, sock)
        except Exception as exc:  # reset meanwhile
            self.log.debug("Cannot move a connection to the event loop: %r", exc)
            direct.move_failed(exc)
            return
        self.direct = None
        self.transport = transport
        direct.hand_over(self.transport)

    def abort(self) -> None:
        """Drop the connection at once: the client sees a truncated response."""
        self.closing = True
        if not self.gone:
            self.transport.abort()

    # -- time limits -------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Called a few times a second by the worker: end waits that lasted too long."""
        waiting = self._waiting
        if waiting is not None:
            if waiting is Wait.IDLE:
                limit = self.config.idle if self.plain else self.config.keepalive
                if self.side.stopping():
                    limit = 0.0
            elif waiting is Wait.CLOSE:
                limit = _CLOSE_WAIT
            else:
                limit = self.http.io_timeout or 10.0
            if now - self._read_since >= limit:
                if waiting is Wait.CLOSE:
                    self._waiting = None
                    self.transport.close()
                else:
                    self.expired = True
                    self._wake_reader()
        if (self.write_paused and self._drainer is not None
                and now - self._write_since >= (self.http.io_timeout or 10.0)):
            self.log.debug("Client %s stopped reading: closing", self.client_addr)
            self.abort()

    def wake_idle(self) -> None:
        """The worker is stopping: an idle connection goes back (or closes) now."""
        if self._waiting is Wait.IDLE:
            self._wake_reader()

    def _wake_reader(self) -> None:
        reader = self._reader
        if reader is not None and not reader.done():
            reader.set_result(None)

    def _wake_drainer(self) -> None:
        drainer = self._drainer
        if drainer is not None and not drainer.done():
            drainer.set_result(None)
