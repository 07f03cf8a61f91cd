"""HTTP/1.1 on one client socket with h11, behind this package's strict request validator,
calling a WSGI application.

:func:`serve_connection` is the only entry point. It owns the conversation but not the file
descriptor: it ends either with :class:`Closed` (after ``shutdown(SHUT_WR)``; the caller closes
the fd) or with :class:`Idle` (the connection is reusable and nothing complete is waiting; the
caller parks the socket together with the bytes already read).

Who does what:

- :mod:`~gunicorn_fdpass.request_rules` finds the end of each request head and accepts or
  refuses it with Gunicorn's rules and statuses (PROXY protocol lines are consumed before, by
  :mod:`~gunicorn_fdpass.proxy_protocol`). A refused head never reaches h11 or the application.
- h11 is the request engine: it frames the request body (``Data``/``EndOfMessage``) and
  tracks ``100-continue``. Each request gets a fresh h11 connection (``_Handler._next_cycle``).
- :class:`_Handler` (this module) runs the loop: reads heads and bodies from the socket,
  builds the environ, calls the application and the hooks, drains what is left of a body,
  and decides whether the connection is kept (``Idle``) or closed (``Closed``).
- :mod:`~gunicorn_fdpass.response` writes each response, without h11 (whose per-response
  checks cost more than the rest of a small request): ``start_response`` state, the checks
  on the application's header fields, the framing decision and the output buffer. It sees
  the connection only as a :class:`~gunicorn_fdpass.response.ResponseSink` (send, sendfile,
  "the response has begun", "does the unread body force a close?"), which
  :class:`_Handler` implements.

**Invariant.** For every accepted request, the validator's framing decision and h11's are
identical, because h11 never sees the client's header fields: it gets a head regenerated from
the validator's decision (:func:`~gunicorn_fdpass.body_framing.h11_head`) with exactly one
framing field, ``Content-Length: N`` or ``Transfer-Encoding: chunked`` (so ``Transfer-Encoding:
gzip, chunked`` is presented as ``chunked``, ``Content-Length: 5, 5`` as ``5``). The bytes after
the head go to h11, which alone decides where the body ends; the bytes after the body come back
from h11 (``trailing_data``) and start the next request. If h11 refuses a head the validator
accepted (a Content-Length of 20 digits or more), the request is answered with h11's
``error_status_hint`` and the connection closes: there is no second framer to fall back on.

HTTP/1.0 keep-alive: when the client asked for it and the response has a length, the response
says ``Connection: keep-alive`` and the connection serves the next request.

Client misbehaviour and socket errors never escape as exceptions: they are logged and end the
connection.
"""

from __future__ import annotations

import datetime
import select
import socket
import ssl
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import IO, Any, Final, ParamSpec, Protocol, TypeVar, cast

import h11

from ..http import proxy_protocol
from ..http.body_framing import RequestBody, start_request
from ..http.proxy_protocol import ProxyInfo
from ..http.request_rules import (
    AddressAllowList,
    ParsedRequest,
    Rejected,
    RequestRules,
    find_head_end,
    parse_head,
)
from ..http.response import Abort, ClientGone, Response, ResponseInfo, error_response
from ..settings import FdpassSettings
from ..wsgi import (
    Address,
    FileWrapper,
    InputStream,
    WSGIApp,
    build_environ,
)

__all__ = [
    "After",
    "Closed",
    "HttpConfig",
    "Idle",
    "RequestBodyError",
    "RequestHooks",
    "RequestInfo",
    "ResponseInfo",
    "serve_connection",
]

_RECV_SIZE = 64 * 1024
# How much unread request body we are willing to read and discard to keep a connection alive;
# beyond that, closing is cheaper than swallowing an upload nobody wanted.
_MAX_DRAIN = 64 * 1024
# Bytes the client sent that we will never read, discarded before closing: closing a socket
# with unread data makes the kernel send RST, which can destroy the response still in flight.
_MAX_DISCARD = 256 * 1024
# A buffered chunked body stays in memory up to this size, then spills to a temporary file.
_SPOOL_IN_MEMORY = 1024 * 1024

# The FDPASS_* defaults are the one source of the knobs HttpConfig shares with them.
_DEFAULTS: Final = FdpassSettings()

_P = ParamSpec("_P")
_T = TypeVar("_T")


@dataclass(frozen=True)
class HttpConfig:
    """Settings of the HTTP handler, derived from Gunicorn's configuration by the worker."""

    server_software: str  # value of the Server header
    url_scheme: str  # "http" (TLS: "https")
    script_name: str  # SCRIPT_NAME prefix, "" by default
    multithread: bool  # wsgi.multithread
    multiprocess: bool  # wsgi.multiprocess
    keepalive: bool  # may a connection serve more than one request?
    io_timeout: float | None  # socket timeout for a stalled client while in a worker
    # Requests served back to back on one connection before it goes back to the master's
    # queue, behind connections that waited meanwhile: bounds the wait of the others.
    burst: int = _DEFAULTS.burst
    # Gunicorn's request limits, compatibility flags and proxy trust settings.
    rules: RequestRules = field(default_factory=RequestRules)
    # Gunicorn's proxy_protocol ("off", "v1", "v2", "auto") and proxy_allow_ips.
    proxy_protocol: str = "off"
    proxy_allow: AddressAllowList = field(
        default_factory=lambda: AddressAllowList(["127.0.0.1", "::1"])
    )
    # A chunked request body is read completely before the application runs, up to this many
    # bytes (more: 413), and the application sees it with a CONTENT_LENGTH: frameworks that
    # ignore wsgi.input_terminated (Django) otherwise read nothing. 0: stream it unbuffered,
    # without CONTENT_LENGTH, as Gunicorn does.
    max_chunked_body: int = _DEFAULTS.max_chunked_body


@dataclass
class RequestInfo:
    """The request as Gunicorn hooks and the access log see it (``req``)."""

    method: str
    uri: str
    path: str
    query: str
    fragment: str
    version: tuple[int, int]
    headers: list[tuple[str, str]]  # names upper-case, like Gunicorn
    scheme: str
    remote_addr: str | tuple[Any, ...]


class RequestHooks(Protocol):
    """Callbacks into the worker (Gunicorn's server hooks, access log, request counting)."""

    def pre_request(self, req: RequestInfo) -> None: ...

    def post_request(
        self, req: RequestInfo, environ: dict[str, Any], resp: ResponseInfo
    ) -> None: ...

    def access(
        self,
        resp: ResponseInfo,
        req: RequestInfo,
        environ: dict[str, Any],
        request_time: datetime.timedelta,
    ) -> None: ...

    def request_started(self) -> After:
        """Count a request that is about to be served; say what happens after it."""
        ...

    def others_waiting(self) -> bool:
        """True if requests that arrived earlier wait for a worker: then the connection goes
        back to the master, behind them, instead of on to its own next request."""
        ...


class After(Enum):
    """What the worker wants once the current request is answered (``request_started``)."""

    #: Serve further requests on this connection as usual.
    CONTINUE = "continue"
    #: This worker serves no further request (``max_requests`` reached): finish this response
    #: with keep-alive intact, then return :class:`Idle` at once, so the master keeps the
    #: connection for another worker.
    HAND_BACK = "hand back"
    #: The server is stopping: answer with ``Connection: close`` and return :class:`Closed`.
    CLOSE = "close"


@dataclass(frozen=True)
class Closed:
    """The handler shut the connection down; the caller closes the fd."""


@dataclass(frozen=True)
class Idle:
    """The connection is reusable and no complete request is waiting."""

    leftover: bytes  # bytes already read that belong to the next request


class RequestBodyError(OSError):
    """Reading ``wsgi.input`` failed: the client went away, stalled, or sent a malformed body.

    It derives from OSError so that applications treating a failed read as an I/O error keep
    working. ``status_hint`` is the status to answer with if nothing was sent yet (None: just
    close the connection).
    """

    def __init__(self, message: str, status_hint: int | None = None) -> None:
        super().__init__(message)
        self.status_hint = status_hint


def _address(get: Any) -> Address:
    try:
        return cast(Address, get())
    except OSError:
        return None


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
    :class:`Idle` when it is reusable and no further complete request is buffered or readable
    without blocking. Never closes the fd. The socket's timeout is set to ``config.io_timeout``.
    """
    return _Handler(sock, app, config, hooks, log).run(prefix)


class _Handler:
    """State of one connection across its requests; the
    :class:`~gunicorn_fdpass.response.ResponseSink` each response is written to."""

    def __init__(
        self,
        sock: socket.socket,
        app: WSGIApp,
        config: HttpConfig,
        hooks: RequestHooks,
        log: Any,
    ) -> None:
        self.sock = sock
        self.app = app
        self.config = config
        self.rules = config.rules
        self.hooks = hooks
        self.log = log
        self.conn = self._new_h11()
        self.server_addr = _address(sock.getsockname)
        self.client_addr = _address(sock.getpeername)
        # Per connection, not per request: the peer cannot change.
        self.trusted = self.rules.forwarded_allow.allows(self.client_addr)
        # sendfile() and the pre-close discard need the raw socket, not a TLS session.
        self.plain = not isinstance(sock, ssl.SSLSocket)
        self.buf = bytearray()  # received, not yet given to h11 or the validator
        self.eof = False  # the client shut its sending side
        self.proxy: ProxyInfo | None = None
        self.dead = False  # a send failed: the connection can carry nothing more
        self.aborted = False  # already shut down in both directions
        self.body: RequestBody | None = None  # the current request's body, read through h11
        self.body_error: RequestBodyError | None = None
        self.responding = False  # the current request's response has begun

    def _new_h11(self) -> h11.Connection:
        # h11 only ever buffers an incomplete chunk-size line or trailer section here (heads
        # are complete when it gets them): bound them like Gunicorn bounds a header section.
        return h11.Connection(h11.SERVER, max_incomplete_event_size=self.rules.max_header_block)

    # -- the loop --------------------------------------------------------------------------

    def run(self, prefix: bytes) -> Closed | Idle:
        try:
            self.sock.settimeout(self.config.io_timeout)
        except OSError as exc:
            self.log.debug("Cannot use client socket: %s", exc)
            return self._close()
        self.buf += prefix
        if self.config.proxy_protocol != "off" and not self._read_proxy_header():
            return self._close()
        served = 0
        while True:
            if served >= self.config.burst or (served and self.hooks.others_waiting()):
                return self._idle()
            got = self._next_request(blocking=served == 0)
            if not isinstance(got, ParsedRequest):
                return got
            served += 1
            after = self._serve_request(got)
            if after is After.CLOSE:
                return self._close()
            if after is After.HAND_BACK:
                return self._idle()

    def _idle(self) -> Idle:
        # h11 holds nothing here: every byte not yet part of a request is in self.buf.
        leftover = bytes(self.buf)
        if self.config.proxy_protocol != "off":
            # What the PROXY header said must survive the connection being parked.
            leftover = proxy_protocol.resume_marker(self.proxy) + leftover
        return Idle(leftover=leftover)

    def _read_proxy_header(self) -> bool:
        """Consume a PROXY header (or our resume marker) at the start; False: close."""
        allowed = self.config.proxy_allow.allows(self.client_addr)
        while True:
            try:
                got = proxy_protocol.parse(self.buf, self.config.proxy_protocol, allowed)
            except Rejected as exc:
                self._reject(exc)
                return False
            if isinstance(got, ProxyInfo):
                del self.buf[: got.consumed]
                self.proxy = None if got.protocol == "NONE" else got
                return True
            if got is proxy_protocol.NOT_PROXY:
                return True
            if not self._recv_into_buffer("a PROXY header"):
                return False

    def _recv_into_buffer(self, what: str) -> bool:
        """One blocking recv() into the buffer; False if the connection is over."""
        if self.eof:
            return False
        try:
            data = self.sock.recv(_RECV_SIZE)
        except TimeoutError:
            self.log.debug("Timed out waiting for %s from %s", what, self.client_addr)
            if self.buf:
                self._send_error(408)  # it had started: tell the client why we hang up
            return False
        except OSError as exc:
            self.log.debug("Error reading from %s: %s", self.client_addr, exc)
            return False
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def _next_request(self, blocking: bool) -> ParsedRequest | Closed | Idle:
        """Read and validate the next request head, then hand it to h11.

        When not ``blocking`` (every request after the first), only data that is already
        buffered or readable right now counts; otherwise the connection is Idle.
        """
        scanned = 0
        while True:
            try:
                end = find_head_end(self.buf, self.rules, scanned)
                if end >= 0:
                    head = bytes(self.buf[:end])
                    del self.buf[:end]
                    request = parse_head(head, self.rules, trusted=self.trusted)
                    self.body = start_request(
                        self.conn, request, self.rules, close=_close_requested(request)
                    )
                    self.body_error = None
                    self.responding = False
                    return request
            except Rejected as exc:
                self._reject(exc)
                return self._close()
            scanned = len(self.buf)
            if not blocking and not self.eof and not self._readable_now():
                return self._idle()
            if not self._recv_into_buffer("a request"):
                return self._close()

    def _reject(self, exc: Rejected) -> None:
        # Gunicorn logs refused requests as warnings too ("Invalid request from ip=...").
        self.log.warning("Invalid request from %s: %s", self.client_addr, exc.reason)
        self._send_error(exc.status_hint)

    def _readable_now(self) -> bool:
        """True if a recv() would not block (data, EOF or an error is pending)."""
        if not self.plain and cast(ssl.SSLSocket, self.sock).pending():
            return True
        try:
            poller = select.poll()
            poller.register(self.sock, select.POLLIN)
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return True  # let recv() report the problem

    def _serve_request(self, request: ParsedRequest) -> After:
        """Run the application for one request; say what happens to the connection next."""
        started = time.monotonic()
        try:
            after = self.hooks.request_started()
        except Exception:
            self.log.exception("Error in request_started hook")
            after = After.CLOSE

        spooled: IO[bytes] | None = None
        if request.chunked and self.config.max_chunked_body > 0:
            spooled = self._buffer_chunked_body()
            if spooled is None:
                return After.CLOSE
        try:
            reusable = self._respond(request, started, after is After.CLOSE, spooled)
        finally:
            if spooled is not None:
                spooled.close()
        return after if reusable else After.CLOSE

    def _respond(
        self,
        request: ParsedRequest,
        started: float,
        close_after: bool,
        spooled: IO[bytes] | None,
    ) -> bool:
        """Run the application and send its response; True if the connection can be reused."""
        req = self._request_info(request)
        wsgi_input: Any = spooled
        if spooled is None:
            wsgi_input = InputStream(self._read_body_chunk, on_first_read=self._send_100_continue)
        wsgi_errors = _ErrorStream(self.log)
        environ = build_environ(
            request,
            server=self.server_addr,
            client=self.client_addr,
            url_scheme=self.config.url_scheme,
            script_name=self.config.script_name,
            wsgi_input=wsgi_input,
            wsgi_errors=wsgi_errors,
            multithread=self.config.multithread,
            multiprocess=self.config.multiprocess,
            server_software=self.config.server_software,
        )
        if spooled is not None:
            # The body is now length-delimited; a proxying application must not forward both.
            assert self.body is not None
            environ["CONTENT_LENGTH"] = str(self.body.received)
            environ.pop("HTTP_TRANSFER_ENCODING", None)
        if self.proxy is not None:
            environ.update(self.proxy.environ())
        tokens = _connection_tokens(request)
        http10 = request.version < (1, 1)
        keep_alive_10 = http10 and "keep-alive" in tokens and "close" not in tokens
        want_close = (
            close_after
            or not self.config.keepalive
            or request.must_close
            or "close" in tokens
            or (http10 and not keep_alive_10)
        )
        resp = Response(
            self,
            self.conn,
            request,
            server_software=self.config.server_software,
            log=self.log,
            want_close=want_close,
            keep_alive_10=keep_alive_10,
        )
        try:
            self._run_app(environ, req, resp)
        finally:
            wsgi_errors.flush()
            info = resp.final_info()
            try:
                self.hooks.post_request(req, environ, info)
            except Exception:
                self.log.exception("Error in post_request hook")
            # No status at all means no response was even attempted (e.g. the client stalled
            # while sending the body): there is nothing for the access log to describe.
            if info.status:
                try:
                    elapsed = datetime.timedelta(seconds=time.monotonic() - started)
                    self.hooks.access(info, req, environ, elapsed)
                except Exception:
                    self.log.exception("Error in access hook")
        if not resp.finished or resp.must_close or self.dead or self.body_error is not None:
            return False
        return self._drain_body() and self._next_cycle()

    def _next_cycle(self) -> bool:
        """After a complete exchange that keeps the connection: a fresh h11 connection for the
        next request (False: close). Fresh, because h11 never saw our response (it would still
        wait for one), and it may hold bytes it must not parse: the next head goes to the
        validator first."""
        conn = self.conn
        if conn.their_state not in _REQUEST_READ:  # cannot happen after _drain_body()
            return False
        # What h11 read past this request (only a chunked body's feed can leave some) belongs
        # to the next one: take it back in front of the rest.
        leftover = conn.trailing_data[0]
        if leftover:
            self.buf[:0] = leftover
        self.conn = self._new_h11()
        return True

    def _buffer_chunked_body(self) -> IO[bytes] | None:
        """Read a whole chunked body into a spooled temporary file (None: answered, close)."""
        limit = self.config.max_chunked_body
        assert self.body is not None
        # Not a context manager: on success the file outlives this call (the caller closes it).
        spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)  # noqa: SIM115
        try:
            self._send_100_continue()
            while chunk := self._read_body_chunk():
                if self.body.received > limit:
                    self.log.warning(
                        "Chunked request body from %s is over %d bytes: refused",
                        self.client_addr,
                        limit,
                    )
                    self._send_error(413)
                    spool.close()
                    return None
                spool.write(chunk)
        except RequestBodyError as exc:
            self.log.warning("Invalid request body from %s: %s", self.client_addr, exc)
            if exc.status_hint is not None:
                self._send_error(exc.status_hint)
            spool.close()
            return None
        except OSError as exc:  # the temporary file (disk full...)
            self.log.error("Cannot buffer a chunked request body: %s", exc)
            self._send_error(500)
            spool.close()
            return None
        spool.seek(0)
        return cast(IO[bytes], spool)

    def _run_app(self, environ: dict[str, Any], req: RequestInfo, resp: Response) -> None:
        result: Iterable[bytes] | None = None
        try:
            try:
                self.hooks.pre_request(req)
                result = self.app(environ, resp.starter.start_response)
                if not (isinstance(result, FileWrapper) and resp.sendfile(result)):
                    # A list or tuple is all there at once, so joining its pieces costs no
                    # latency; anything else may be a stream, so each piece goes out as it
                    # comes.
                    in_memory = isinstance(result, (list, tuple))
                    for chunk in result:
                        resp.body(chunk)
                        if not in_memory:
                            resp.flush()
                resp.finish()
            finally:
                if result is not None:
                    self._close_iterable(result)
        except ClientGone as exc:
            self.log.debug("Client %s went away: %s", self.client_addr, exc)
        except Abort:
            self._abort(resp)
        except RequestBodyError as exc:
            # The application let a failed body read escape: the client is at fault.
            self.log.warning("Invalid request body from %s: %s", self.client_addr, exc)
            if resp.committed:
                self._abort(resp)
            elif exc.status_hint is not None:
                resp.send_error(exc.status_hint)
        except Exception:
            self.log.exception("Error handling request %s", req.uri)
            if resp.committed:
                self._abort(resp)
            else:
                resp.send_error(500)

    def _close_iterable(self, result: Iterable[bytes]) -> None:
        close = getattr(result, "close", None)
        if close is None:
            return
        try:
            close()
        except Exception:
            self.log.exception("Error closing the response iterable")

    def _drain_body(self) -> bool:
        """Read and discard what the application left of the request body (bounded);
        True if the connection is then ready for the next request."""
        budget = _MAX_DRAIN
        while self.body is not None and not self.body.done:
            try:
                budget -= len(self._read_body_chunk())
            except RequestBodyError:
                return False
            if budget < 0:
                self.log.debug("Large unread request body from %s: closing", self.client_addr)
                return False
        return True

    # -- request side ----------------------------------------------------------------------

    def _request_info(self, request: ParsedRequest) -> RequestInfo:
        return RequestInfo(
            method=request.method,
            uri=request.target,
            path=request.path,
            query=request.query,
            fragment=request.fragment,
            version=request.version,
            headers=request.headers,
            scheme=request.scheme or self.config.url_scheme,
            remote_addr=_printable_address(self.client_addr),
        )

    def _read_body_chunk(self) -> bytes:
        """Next piece of the request body for wsgi.input (from h11); b"" at its end."""
        if self.body_error is not None:
            raise self.body_error
        body = self.body
        assert body is not None
        while True:
            try:
                data = body.next_data()
            except Rejected as exc:
                raise self._body_failed(f"invalid body: {exc.reason}", exc.status_hint) from None
            if data is not None:
                return data
            # h11 needs more: from what was read already, else from the socket, and never
            # more than it may take (for a Content-Length body: not past its end).
            wants = body.wants()
            if self.buf or body.chunked:
                if not self.buf:
                    self.buf += self._recv_body(_RECV_SIZE)
                data = bytes(self.buf[:wants])
                del self.buf[:wants]
            else:
                # Straight from the socket, never past the end of the body: no buffer copy.
                data = self._recv_body(min(_RECV_SIZE, wants))
            body.receive(data)

    def _recv_body(self, size: int) -> bytes:
        assert self.body is not None
        if self.eof:
            data = b""
        else:
            try:
                data = self.sock.recv(size)
            except TimeoutError:
                raise self._body_failed("timed out reading the request body") from None
            except OSError as exc:
                raise self._body_failed(f"error reading the request body: {exc}") from exc
        if not data:
            self.eof = True
            error = self.body.eof_error()
            raise self._body_failed(
                "client closed the connection in the request body",
                error.status_hint if error is not None else None,
            )
        return data

    def _body_failed(self, message: str, status_hint: int | None = None) -> RequestBodyError:
        self.body_error = RequestBodyError(message, status_hint)
        return self.body_error

    def _send_100_continue(self) -> None:
        """Called before the first body read: the client may be waiting."""
        # h11 does not see our responses: once one has begun, an interim one is too late.
        if self.responding or not self.conn.they_are_waiting_for_100_continue:
            return
        data = self.conn.send(
            h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
        )
        try:
            self.sendall(data)
        except ClientGone as exc:
            raise self._body_failed(f"client went away: {exc}") from None

    # -- output: the ResponseSink that response.Response writes through -------------------
    # (with ``plain``, set in __init__)

    def blocking(self) -> bool:
        return self.sock.gettimeout() != 0

    def sendall(self, data: bytes) -> None:
        self._send(self.sock.sendall, data)

    def sendfile(self, file: IO[bytes], offset: int, count: int) -> int:
        return self._send(self.sock.sendfile, file, offset, count)

    def _send(self, send: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """Call a socket send method; the first failure makes the connection dead for good."""
        if self.dead:
            raise ClientGone("connection already failed")
        try:
            return send(*args, **kwargs)
        except OSError as exc:
            self.dead = True
            raise ClientGone(str(exc) or type(exc).__name__) from exc

    def response_begun(self) -> None:
        self.responding = True

    def unread_body_forbids_reuse(self) -> bool:
        if self.conn.they_are_waiting_for_100_continue:
            # The application never read the body, so we never asked for it: the client may
            # or may not send it now, and the connection cannot be trusted for another request.
            return True
        # Too much unread body to drain after the response (_drain_body): say now that we
        # will close.
        remaining = self.body.remaining if self.body is not None else None
        return remaining is not None and remaining > _MAX_DRAIN

    # -- errors and closing ----------------------------------------------------------------

    def _send_error(self, status_code: int) -> None:
        """Answer a request that could not be served (refused, timed out) and plan to close."""
        data, _ = error_response(self.conn, status_code, self.config.server_software, False)
        if not data:
            return
        try:
            self.sendall(data)
        except ClientGone as exc:
            self.log.debug("Cannot send %d to %s: %s", status_code, self.client_addr, exc)

    def _abort(self, resp: Response) -> None:
        """Drop a connection whose response cannot be completed: the client must see a
        truncated message, never a second response."""
        try:
            resp.flush()
        except ClientGone:
            pass
        self.aborted = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _close(self) -> Closed:
        if not self.aborted:
            self.aborted = True
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                return Closed()
            if self.plain and not self.eof:
                self._discard_unread_input()
        return Closed()

    def _discard_unread_input(self) -> None:
        total = 0
        try:
            while total < _MAX_DISCARD and self._readable_now():
                data = self.sock.recv(_RECV_SIZE)
                if not data:
                    return
                total += len(data)
        except OSError:
            return


# h11's states once a whole request was read (MUST_CLOSE: h11 closes after every HTTP/1.0
# exchange, even one we keep alive).
_REQUEST_READ = (h11.DONE, h11.MUST_CLOSE)


def _connection_tokens(request: ParsedRequest) -> set[str]:
    """The options of the request's Connection field(s), lower case."""
    return {
        token.strip(" \t").lower()
        for name, value in request.headers
        if name == "CONNECTION"
        for token in value.split(",")
    }


def _close_requested(request: ParsedRequest) -> bool:
    """True if the connection cannot carry another request after this one, whatever the
    response: the request says so, or it cannot be trusted to end where it says."""
    return request.must_close or "close" in _connection_tokens(request)


def _printable_address(addr: Address) -> str | tuple[Any, ...]:
    if isinstance(addr, tuple):
        return addr
    if isinstance(addr, bytes):
        return addr.decode("latin-1")
    return addr or ""


class _ErrorStream:
    """``wsgi.errors``: text written by the application goes to the error log."""

    def __init__(self, log: Any) -> None:
        self._log = log
        self._partial = ""

    def write(self, text: str) -> int:
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            self._log.error("%s", line)
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self._partial:
            self._log.error("%s", self._partial)
            self._partial = ""
