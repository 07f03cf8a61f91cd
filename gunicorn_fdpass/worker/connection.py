"""HTTP/1.1 on one client socket: the connection loop. Drives the sans-IO layer of
:mod:`gunicorn_fdpass.http` with blocking socket calls.

:func:`serve_connection` is the only entry point. It owns the conversation but not the file
descriptor: it ends either with :class:`Closed` (after ``shutdown(SHUT_WR)``; the caller closes
the fd) or with :class:`Idle` (the connection goes back to the master together with the bytes
already read).

Who does what:

- :class:`ConnectionLoop` (this module) holds what lives as long as the connection: the
  socket (:class:`~gunicorn_fdpass.worker.transport.Transport`), the bytes received and not
  yet used, the client's EOF, its address and PROXY header. It reads a PROXY header
  (:mod:`~gunicorn_fdpass.http.proxy_protocol`), then request heads: where each ends
  (:func:`~gunicorn_fdpass.http.request_rules.find_head_end`) and what it says
  (:func:`~gunicorn_fdpass.http.request_head.receive_head`: h11 parses the client's bytes,
  Gunicorn's rules run around it). A refused head is answered and ends the connection.
- :class:`~gunicorn_fdpass.worker.cycle.RequestCycle`, created fresh for every request, holds
  what lives as long as the request (h11's body state, the response, 100-continue) and runs
  the application; it ends with the keep-alive decision
  (:func:`~gunicorn_fdpass.http.keep_alive.decide`): keep serving, hand back, or close.

Client misbehaviour and socket errors never escape as exceptions: they are logged and end the
connection.
"""

from __future__ import annotations

import socket
from typing import Any, Final, cast

from ..http import proxy_protocol
from ..http.body_framing import RequestBody
from ..http.config import HttpConfig
from ..http.keep_alive import After, Next
from ..http.proxy_protocol import ProxyInfo
from ..http.request_head import receive_head
from ..http.request_rules import ParsedRequest, Rejected, find_head_end
from ..http.response import ResponseInfo
from ..http.serialize import error_message
from ..wsgi import Address, WSGIApp
from .api import Closed, Idle, RequestBodyError, RequestHooks, RequestInfo
from .cycle import RequestCycle
from .transport import LINGER_SECONDS, RECV_SIZE, ClientGone, Transport

__all__ = [
    "After",
    "Closed",
    "ConnectionLoop",
    "HttpConfig",
    "Idle",
    "RequestBodyError",
    "RequestHooks",
    "RequestInfo",
    "ResponseInfo",
    "serve_connection",
]


def serve_connection(
    sock: socket.socket,
    prefix: bytes,
    app: WSGIApp,
    config: HttpConfig,
    hooks: RequestHooks,
    log: Any,
) -> Closed | Idle:
    """Serve HTTP requests on ``sock``, whose first bytes (already read elsewhere) are ``prefix``.

    Returns :class:`Closed` once the connection had to end (after ``shutdown(SHUT_WR)``), or
    :class:`Idle` when it goes back to the master: no further complete request is buffered or
    readable without blocking, or the keep-alive decision hands it back. Never closes the fd.
    A read, or a whole send, waits at most ``config.io_timeout`` for the client (see
    :class:`~gunicorn_fdpass.worker.transport.Transport`).
    """
    return ConnectionLoop(sock, app, config, hooks, log).run(prefix)


class _Unknown:
    """Marks an address not asked for yet (None is a valid answer: unknown)."""


_UNKNOWN: Final = _Unknown()


def _address(get: Any) -> Address:
    try:
        return cast(Address, get())
    except OSError:
        return None


class ConnectionLoop:
    """The state of one connection across its requests, and the loop that serves them."""

    # Slots: made for every connection or request; their attributes are read throughout.
    __slots__ = ("_server_addr", "app", "buf", "client_addr", "config", "eof", "hooks", "linger",
                 "log", "policy", "proxy", "rules", "transport", "trusted")

    def __init__(
        self,
        sock: socket.socket,
        app: WSGIApp,
        config: HttpConfig,
        hooks: RequestHooks,
        log: Any,
    ) -> None:
        self.transport = Transport(sock)
        self.app = app
        self.config = config
        self.rules = config.rules
        self.policy = config.policy
        self.hooks = hooks
        self.log = log
        # Our own address is only needed for a request without Host (server_address):
        # asked on first use, it costs most connections no getsockname().
        self._server_addr: Address | _Unknown = _UNKNOWN
        self.client_addr = _address(sock.getpeername)
        # Per connection, not per request: the peer cannot change.
        self.trusted = self.rules.forwarded_allow.allows(self.client_addr)
        self.buf = bytearray()  # received, not yet part of a request
        self.eof = False  # the client shut its sending side
        self.proxy: ProxyInfo | None = None
        # The client may still be sending when the connection ends (an error answer, or a
        # request body left unread): the close then lingers (Transport.finish).
        self.linger = False

    def server_address(self) -> Address:
        """The socket's own address (``getsockname()``, asked once)."""
        addr = self._server_addr
        if isinstance(addr, _Unknown):
            addr = self._server_addr = _address(self.transport.sock.getsockname)
        return addr

    def run(self, prefix: bytes) -> Closed | Idle:
        """Serve requests until the connection ends or goes back to the master."""
        try:
            self.transport.set_timeout(self.config.io_timeout)
        except OSError as exc:
            self.log.debug("Cannot use client socket: %s", exc)
            return self.close()
        self.buf += prefix
        if self.config.proxy_protocol != "off" and not self._read_proxy_header():
            return self.close()
        served = 0
        while True:
            got = self._next_request(blocking=served == 0)
            if not isinstance(got, tuple):
                return got
            served += 1
            cycle = RequestCycle(self, *got)
            fate = cycle.run(served)
            if fate is Next.CLOSE:
                self.linger = self.linger or not cycle.reader.body.done
                return self.close()
            if fate is Next.HAND_BACK:
                return self._idle()

    def _idle(self) -> Idle:
        # h11 holds nothing here: every byte not yet part of a request is in self.buf.
        leftover = bytes(self.buf)
        if self.config.proxy_protocol != "off":
            # What the PROXY header said must survive the connection being parked.
            leftover = proxy_protocol.resume_marker(self.proxy) + leftover
        return Idle(leftover=leftover)

    def close(self) -> Closed:
        """End the connection (unless already aborted); the caller closes the fd."""
        self.transport.finish(client_done=self.eof,
                              linger=LINGER_SECONDS if self.linger else 0.0)
        return Closed()

    def _read_proxy_header(self) -> bool:
        """Consume a PROXY header (or our resume marker) at the start; False: close."""
        allowed = self.config.proxy_allow.allows(self.client_addr)
        while True:
            try:
                known, proxy = proxy_protocol.take_header(
                    self.buf, self.config.proxy_protocol, allowed)
            except Rejected as exc:
                self._reject(exc)
                return False
            if known:
                self.proxy = proxy
                return True
            if not self._recv_into_buffer("a PROXY header"):
                return False

    def _recv_into_buffer(self, what: str, wait: bool = True) -> bool | None:
        """One recv() into the buffer; False if the connection is over. Unless ``wait``,
        only what has arrived counts: None if nothing has."""
        if self.eof:
            return False
        try:
            if wait:
                data = self.transport.recv(RECV_SIZE)
            else:
                got = self.transport.recv_now(RECV_SIZE)
                if got is None:
                    return None
                data = got
        except TimeoutError:
            self.log.debug("Timed out waiting for %s from %s", what, self.client_addr)
            if self.buf:
                # It had started: tell the client why we hang up (no lingering for a client
                # that was not sending anyway).
                self.send_error(408, linger=False)
            return False
        except OSError as exc:
            self.log.debug("Error reading from %s: %s", self.client_addr, exc)
            return False
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def _next_request(
        self, blocking: bool
    ) -> tuple[ParsedRequest, RequestBody] | Closed | Idle:
        """Read the next request head and parse it (h11 behind Gunicorn's rules).

        When not ``blocking`` (every request after the first), only data that is already
        buffered or readable right now counts; otherwise the connection is Idle.
        """
        scanned = 0
        while True:
            try:
                # (Nothing to look for in an empty buffer: the usual first read.)
                end = find_head_end(self.buf, self.rules, scanned) if self.buf else -1
                if end >= 0:
                    head = bytes(self.buf[:end])
                    del self.buf[:end]
                    return receive_head(head, self.rules, trusted=self.trusted)
            except Rejected as exc:
                self._reject(exc)
                return self.close()
            scanned = len(self.buf)
            got = self._recv_into_buffer("a request", wait=blocking)
            if got is None:
                return self._idle()
            if not got:
                return self.close()

    def _reject(self, exc: Rejected) -> None:
        # Gunicorn logs refused requests as warnings too ("Invalid request from ip=...").
        self.log.warning("Invalid request from %s: %s", self.client_addr, exc.reason)
        self.send_error(exc.status_hint)

    def send_error(self, status_code: int, linger: bool = True) -> None:
        """Answer a request that could not be served (refused, timed out), before any response
        to it began; the connection then ends (lingering, unless told not to: the client may
        still be sending the request)."""
        self.linger = linger
        self.send_quietly(error_message(status_code, self.config.server_software).data)

    def send_quietly(self, data: bytes) -> bool:
        """Send ``data``; a failure is logged, not raised (the connection then ends)."""
        try:
            self.transport.sendall(data)
        except ClientGone as exc:
            self.log.debug("Cannot send to %s: %s", self.client_addr, exc)
            return False
        return True
