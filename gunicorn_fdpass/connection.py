"""HTTP/1.1 on one client socket, parsed and framed by h11, calling a WSGI application.

:func:`serve_connection` is the only entry point. It owns the conversation but not the file
descriptor: it ends either with :class:`Closed` (after ``shutdown(SHUT_WR)``; the caller closes
the fd) or with :class:`Idle` (the connection is reusable and nothing complete is waiting; the
caller parks the socket together with the bytes already read).

Client misbehaviour and socket errors never escape as exceptions: they are logged at debug
level and end the connection.
"""

from __future__ import annotations

import datetime
import os
import select
import socket
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Protocol, cast

import h11

from .head import head_complete
from .wsgi import (
    Address,
    FileWrapper,
    InputStream,
    ResponseStarter,
    WSGIApp,
    build_environ,
    split_target,
)

__all__ = [
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
# The blank line ending a request head (h11 also accepts bare LF line endings).
# Body pieces that are all available at once (a list response) are joined into sends of
# about this size instead of one syscall per piece.
_SEND_BUFFER = 64 * 1024
# How much unread request body we are willing to read and discard to keep a connection alive;
# beyond that, closing is cheaper than swallowing an upload nobody wanted.
_MAX_DRAIN = 64 * 1024
# Bytes the client sent that we will never read, discarded before closing: closing a socket
# with unread data makes the kernel send RST, which can destroy the response still in flight.
_MAX_DISCARD = 256 * 1024

# RFC 9110 7.6.1 hop-by-hop fields: the server owns the connection, so an application's values
# for these are dropped (``Connection: close`` is honoured, see _Response._final_headers).
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)


@dataclass(frozen=True)
class HttpConfig:
    """Settings of the HTTP handler, derived from Gunicorn's configuration by the worker."""

    server_software: str  # value of the Server header
    url_scheme: str  # "http" (TLS: "https")
    script_name: str  # SCRIPT_NAME prefix, "" by default
    max_header_bytes: int  # bound on a request head (h11 max_incomplete_event_size)
    multithread: bool  # wsgi.multithread
    multiprocess: bool  # wsgi.multiprocess
    keepalive: bool  # may a connection serve more than one request?
    io_timeout: float | None  # socket timeout for a stalled client while in a worker
    # Requests served back to back on one connection before it goes back to the master's
    # queue, behind connections that waited meanwhile: bounds the wait of the others.
    burst: int = 16


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


@dataclass
class ResponseInfo:
    """The response as hooks and the access log see it (``resp``)."""

    status: str = ""  # "200 OK"
    status_code: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    sent: int = 0  # body bytes sent


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

    def request_started(self) -> bool: ...


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


class _PeerGone(Exception):
    """Sending to the client failed: nothing more can be sent on this connection."""


class _Abort(Exception):
    """The response cannot be completed correctly (already logged): drop the connection."""


class _Placeholder:
    """Stands for bytes that went out with sendfile(), so h11 can count them."""

    def __init__(self, size: int) -> None:
        self._size = size

    def __len__(self) -> int:
        return self._size


_date_cache: tuple[int, str] = (0, "")


def _http_date() -> str:
    """The current time as an IMF-fixdate, recomputed at most once per second."""
    global _date_cache
    now = int(time.time())
    cached_at, value = _date_cache
    if cached_at != now:
        value = formatdate(now, usegmt=True)
        _date_cache = (now, value)
    return value


def _reason(code: int) -> str:
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return "Error"


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
    """State of one connection across its requests."""

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
        self.hooks = hooks
        self.log = log
        self.conn = self._new_h11()
        self.server_addr = _address(sock.getsockname)
        self.client_addr = _address(sock.getpeername)
        # sendfile() and the pre-close discard need the raw socket, not a TLS session.
        self.plain = not isinstance(sock, ssl.SSLSocket)
        self.dead = False  # a send failed: the connection can carry nothing more
        self.aborted = False  # already shut down in both directions
        self.body_done = False
        self.body_error: RequestBodyError | None = None
        self.body_length: int | None = None  # declared Content-Length (None: chunked)
        self.body_received = 0

    def _new_h11(self) -> h11.Connection:
        return h11.Connection(h11.SERVER, max_incomplete_event_size=self.config.max_header_bytes)

    # -- the loop --------------------------------------------------------------------------

    def run(self, prefix: bytes) -> Closed | Idle:
        try:
            self.sock.settimeout(self.config.io_timeout)
        except OSError as exc:
            self.log.debug("Cannot use client socket: %s", exc)
            return self._close()
        if prefix:  # h11 takes b"" as end-of-file
            self.conn.receive_data(prefix)
        served = 0
        while True:
            if served >= self.config.burst:
                return Idle(leftover=self.conn.trailing_data[0])
            got = self._next_request(blocking=served == 0)
            if not isinstance(got, h11.Request):
                return got
            served += 1
            if not self._serve_request(got):
                return self._close()

    def _next_request(self, blocking: bool) -> h11.Request | Closed | Idle:
        """Parse the next request head, reading as needed.

        When not ``blocking`` (every request after the first), only data that is already
        buffered or readable right now counts; otherwise the connection is Idle.
        """
        while True:
            if self._head_too_large():
                self.log.debug("Request head from %s is too large", self.client_addr)
                self._send_error(431)
                return self._close()
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                self.log.debug("Invalid request from %s: %s", self.client_addr, exc)
                self._send_error(exc.error_status_hint)
                return self._close()
            if isinstance(event, h11.Request):
                return event
            if event is not h11.NEED_DATA:  # ConnectionClosed: the client is done
                return self._close()
            if not blocking and not self._readable_now():
                return Idle(leftover=self.conn.trailing_data[0])
            try:
                data = self.sock.recv(_RECV_SIZE)
            except TimeoutError:
                self.log.debug("Timed out waiting for a request from %s", self.client_addr)
                if self.conn.trailing_data[0]:
                    # The head had started: tell the client why we hang up.
                    self._send_error(408)
                return self._close()
            except OSError as exc:
                self.log.debug("Error reading from %s: %s", self.client_addr, exc)
                return self._close()
            self.conn.receive_data(data)

    def _head_too_large(self) -> bool:
        """True if the buffered request head is longer than config.max_header_bytes.

        h11 enforces ``max_incomplete_event_size`` only while it waits for more data, so a
        large head that arrived in a single recv() would slip through without this check.
        """
        limit = self.config.max_header_bytes
        data = self.conn.trailing_data[0]
        return len(data) > limit and not head_complete(data, limit)

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

    def _serve_request(self, request: h11.Request) -> bool:
        """Run the application for one request; True if the connection can be reused."""
        started = time.monotonic()
        self.body_done = False
        self.body_error = None
        self.body_received = 0
        self.body_length = None
        for name, value in request.headers.raw_items():
            if name.lower() == b"content-length":
                self.body_length = int(value)  # h11 validated it
        try:
            close_after = self.hooks.request_started()
        except Exception:
            self.log.exception("Error in request_started hook")
            close_after = True

        req = self._request_info(request)
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
        connection_tokens = {
            token.strip().lower()
            for value in request.headers.raw_items()
            if value[0].lower() == b"connection"
            for token in value[1].split(b",")
        }
        http10 = request.http_version < b"1.1"
        keep_alive_10 = (
            http10 and b"keep-alive" in connection_tokens and b"close" not in connection_tokens
        )
        want_close = close_after or not self.config.keepalive or (http10 and not keep_alive_10)
        resp = _Response(self, request, want_close=want_close, keep_alive_10=keep_alive_10)
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
        return self._prepare_next(resp.keep_alive_10)

    def _run_app(self, environ: dict[str, Any], req: RequestInfo, resp: _Response) -> None:
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
        except _PeerGone as exc:
            self.log.debug("Client %s went away: %s", self.client_addr, exc)
        except _Abort:
            self._abort(resp)
        except RequestBodyError as exc:
            # The application let a failed body read escape: the client is at fault.
            self.log.debug("Error reading request body from %s: %s", self.client_addr, exc)
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

    def _prepare_next(self, keep_alive_10: bool) -> bool:
        """After a complete response: make ready for the next request, or say it cannot be."""
        conn = self.conn
        if keep_alive_10:
            # h11 never keeps HTTP/1.0 connections alive, so its state machine insists on
            # closing (MUST_CLOSE); the response head was written accordingly by _Response.
            # A fresh h11 connection takes over the bytes that follow.
            if conn.our_state is not h11.MUST_CLOSE or not self._drain_body():
                return False
            if conn.their_state is not h11.MUST_CLOSE:
                return False
            leftover, eof = conn.trailing_data
            if eof:
                return False
            self.conn = self._new_h11()
            if leftover:
                self.conn.receive_data(leftover)
            return True
        if conn.our_state is not h11.DONE or not self._drain_body():
            return False
        if conn.their_state is not h11.DONE:
            return False
        conn.start_next_cycle()
        return True

    def _drain_body(self) -> bool:
        """Read and discard what the application left of the request body (bounded)."""
        budget = _MAX_DRAIN
        while not self.body_done:
            try:
                budget -= len(self._read_body_chunk())
            except RequestBodyError:
                return False
            if budget < 0:
                self.log.debug("Large unread request body from %s: closing", self.client_addr)
                return False
        return True

    # -- request side ----------------------------------------------------------------------

    def _request_info(self, request: h11.Request) -> RequestInfo:
        path, query, fragment = split_target(request.target)
        major, _, minor = request.http_version.partition(b".")
        return RequestInfo(
            method=request.method.decode("latin-1"),
            uri=request.target.decode("latin-1"),
            path=path.decode("latin-1"),
            query=query.decode("latin-1"),
            fragment=fragment.decode("latin-1"),
            version=(int(major), int(minor or b"0")),
            headers=[
                (name.decode("latin-1").upper(), value.decode("latin-1"))
                for name, value in request.headers.raw_items()
                # Same rule as the environ: such names are dropped (header_map = "drop").
                if b"_" not in name
            ],
            scheme=self.config.url_scheme,
            remote_addr=_printable_address(self.client_addr),
        )

    def _read_body_chunk(self) -> bytes:
        """Next piece of the request body for wsgi.input; b"" at its end."""
        if self.body_error is not None:
            raise self.body_error
        if self.body_done:
            return b""
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise self._body_failed(
                    f"invalid request body: {exc}", exc.error_status_hint
                ) from exc
            if isinstance(event, h11.Data):
                if event.data:
                    self.body_received += len(event.data)
                    return bytes(event.data)
                continue
            if event is not h11.NEED_DATA:  # EndOfMessage (or nothing more to come)
                self.body_done = True
                return b""
            try:
                data = self.sock.recv(_RECV_SIZE)
            except TimeoutError:
                raise self._body_failed("timed out reading the request body") from None
            except OSError as exc:
                raise self._body_failed(f"error reading the request body: {exc}") from exc
            self.conn.receive_data(data)

    def _body_failed(self, message: str, status_hint: int | None = None) -> RequestBodyError:
        self.body_error = RequestBodyError(message, status_hint)
        return self.body_error

    def _send_100_continue(self) -> None:
        """Called before the application's first body read: the client may be waiting."""
        if not self.conn.they_are_waiting_for_100_continue:
            return
        data = self.conn.send(
            h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
        )
        try:
            self.sendall(data or b"")
        except _PeerGone as exc:
            raise self._body_failed(f"client went away: {exc}") from None

    # -- output ----------------------------------------------------------------------------

    def sendall(self, data: bytes) -> None:
        if self.dead:
            raise _PeerGone("connection already failed")
        try:
            self.sock.sendall(data)
        except OSError as exc:
            self.dead = True
            raise _PeerGone(str(exc) or type(exc).__name__) from exc

    def _send_error(self, status_code: int) -> None:
        """Answer a request that could not even be parsed (or timed out) and plan to close."""
        data, _ = _error_response(self.conn, status_code, self.config.server_software, False)
        if data:
            try:
                self.sendall(data)
            except _PeerGone as exc:
                self.log.debug("Cannot send %d to %s: %s", status_code, self.client_addr, exc)

    def _abort(self, resp: _Response) -> None:
        """Drop a connection whose response cannot be completed: the client must see a
        truncated message, never a second response."""
        try:
            resp.flush()
        except _PeerGone:
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
            if self.plain:
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


def _printable_address(addr: Address) -> str | tuple[Any, ...]:
    if isinstance(addr, tuple):
        return addr
    if isinstance(addr, bytes):
        return addr.decode("latin-1")
    return addr or ""


def _error_response(
    conn: h11.Connection, status_code: int, server_software: str, head: bool
) -> tuple[bytes, ResponseInfo]:
    """Serialize a small plain-text error response with ``Connection: close``.

    Returns the bytes to send (empty if h11's state does not allow a response any more) and
    the response as the hooks see it.
    """
    reason = _reason(status_code)
    body = f"{status_code} {reason}\n".encode()
    headers = [("Date", _http_date())]
    if server_software:
        headers.insert(0, ("Server", server_software))
    headers += [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(body))),
        ("Connection", "close"),
    ]
    event = h11.Response(
        status_code=status_code,
        reason=reason.encode("latin-1"),
        headers=[(name.encode("ascii"), value.encode("latin-1")) for name, value in headers],
    )
    try:
        parts = [conn.send(event)]
        if not head:
            parts.append(conn.send(h11.Data(data=body)))
        parts.append(conn.send(h11.EndOfMessage()))
    except h11.LocalProtocolError:
        return b"", ResponseInfo()
    info = ResponseInfo(f"{status_code} {reason}", status_code, headers, 0 if head else len(body))
    return b"".join(p for p in parts if p), info


def _serialize_head(status_code: int, reason: str, headers: list[tuple[str, str]]) -> bytes:
    """Status line and headers, formatted exactly like h11 does."""
    lines = [b"HTTP/1.1 %d %s\r\n" % (status_code, reason.encode("latin-1"))]
    lines += [b"%s: %s\r\n" % (n.encode("ascii"), v.encode("latin-1")) for n, v in headers]
    lines.append(b"\r\n")
    return b"".join(lines)


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


class _Response:
    """The response to one request: start_response state, framing checks, output buffer."""

    def __init__(
        self, handler: _Handler, request: h11.Request, *, want_close: bool, keep_alive_10: bool
    ) -> None:
        self.handler = handler
        self.conn = handler.conn
        self.head = request.method == b"HEAD"
        self.uri = request.target.decode("latin-1")
        self.starter = ResponseStarter(self.write, lambda: self.committed)
        self.info = ResponseInfo()
        self.must_close = want_close
        self.keep_alive_10 = keep_alive_10 and not want_close
        self.committed = False  # status and headers are fixed (queued or sent)
        self.finished = False  # EndOfMessage was sent
        self.bodyless = False  # HEAD, 204, 304: body bytes from the app are dropped
        self.content_length: int | None = None
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._pending_body = 0  # body bytes in _pending (counted as sent once flushed)
        self._body_bytes = 0  # body bytes accepted so far, sent or queued
        self._too_long = False

    # -- the WSGI side ---------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """PEP 3333 ``write()`` callable: data goes out before this returns."""
        if not self.starter.started:
            raise RuntimeError("write() called before start_response()")
        self.body(data)
        self.flush()

    def body(self, data: bytes) -> None:
        """Queue one piece of the body (empty pieces are skipped: they mean nothing)."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"response body items must be bytes, not {type(data).__name__}")
        if not data:
            return
        if not self.committed:
            self._commit()
        if self.bodyless:
            return
        data = bytes(data)
        if self.content_length is not None:
            room = self.content_length - self._body_bytes
            if len(data) > room:
                if not self._too_long:
                    self._too_long = True
                    self.handler.log.warning(
                        "Application sent more than its Content-Length (%d) for %s: "
                        "truncated, closing the connection",
                        self.content_length,
                        self.uri,
                    )
                self.must_close = True
                data = data[:room]
                if not data:
                    return
        self._queue(self.conn.send(h11.Data(data=data)), len(data))

    def finish(self) -> None:
        """End the response (sending the head first if the body was empty)."""
        if not self.committed:
            self._commit()
        if (
            not self.bodyless
            and self.content_length is not None
            and self._body_bytes < self.content_length
        ):
            self.handler.log.error(
                "Application sent %d of the %d bytes of its Content-Length for %s: "
                "closing the connection",
                self._body_bytes,
                self.content_length,
                self.uri,
            )
            raise _Abort
        self._queue(self.conn.send(h11.EndOfMessage()))
        self.flush()
        self.finished = True

    def sendfile(self, wrapper: FileWrapper) -> bool:
        """Send a wsgi.file_wrapper's file with sendfile(); False to fall back to iterating."""
        if not self.handler.plain or not self.starter.started:
            return False
        fd = wrapper.fileno()
        if fd is None:
            return False
        if not self.committed:
            self._commit()
        if self.bodyless:
            return True
        sock = self.handler.sock
        if self.content_length is None or sock.gettimeout() == 0:
            return False
        remaining = self.content_length - self._body_bytes
        if remaining <= 0:
            return True
        try:
            offset = wrapper.filelike.tell()
        except (OSError, ValueError, AttributeError):
            offset = os.lseek(fd, 0, os.SEEK_CUR)
        self.flush()  # the head goes first
        if self.handler.dead:
            raise _PeerGone("connection already failed")
        try:
            sent = sock.sendfile(wrapper.filelike, offset, remaining)
        except OSError as exc:
            self.handler.dead = True
            raise _PeerGone(str(exc) or type(exc).__name__) from exc
        if sent:
            # Only the accounting: the bytes themselves already left through sendfile().
            self.conn.send_with_data_passthrough(h11.Data(data=cast(bytes, _Placeholder(sent))))
            self._body_bytes += sent
            self.info.sent += sent
        return True

    # -- status line and headers -----------------------------------------------------------

    def _commit(self) -> None:
        starter = self.starter
        if not starter.started:
            raise RuntimeError("the application did not call start_response()")
        code = starter.status_code
        if code < 200:
            raise ValueError(f"status {starter.status!r} cannot be a final response")
        self.bodyless = self.head or code in (204, 304)
        headers = self._final_headers(starter.headers, code)
        event = h11.Response(
            status_code=code,
            reason=starter.reason.encode("latin-1"),
            headers=[(name.encode("ascii"), value.encode("latin-1")) for name, value in headers],
        )
        data = self.conn.send(event) or b""
        if self.keep_alive_10:
            # h11 would force "Connection: close" on an HTTP/1.0 client; it still frames the
            # body (Content-Length or none), so only the head is written here.
            data = _serialize_head(code, starter.reason, headers)
        self.committed = True
        self.info = ResponseInfo(starter.status or "", code, headers, 0)
        self._queue(data)

    def _final_headers(
        self, app_headers: list[tuple[str, str]], code: int
    ) -> list[tuple[str, str]]:
        headers: list[tuple[str, str]] = []
        has_date = has_server = False
        for name, raw_value in app_headers:
            lname = name.lower()
            # RFC 9110 5.5: surrounding whitespace is not part of a field value.
            value = raw_value.strip(" \t")
            if lname in _HOP_BY_HOP:
                if lname == "connection" and "close" in value.lower().replace(" ", "").split(","):
                    self.must_close = True
                continue
            if lname == "content-length":
                if code == 204:  # RFC 9110 8.6: never on a 204
                    continue
                if not value.isdigit() or (
                    self.content_length is not None and int(value) != self.content_length
                ):
                    raise ValueError(f"invalid Content-Length {value!r}")
                self.content_length = int(value)
            elif lname == "date":
                has_date = True
            elif lname == "server":
                has_server = True
            headers.append((name, value))
        defaults: list[tuple[str, str]] = []
        software = self.handler.config.server_software
        if not has_server and software:
            defaults.append(("Server", software))
        if not has_date:
            defaults.append(("Date", _http_date()))
        headers = defaults + headers

        handler = self.handler
        if self.conn.they_are_waiting_for_100_continue:
            # The application never read the body, so we never asked for it: the client may
            # or may not send it now, and the connection cannot be trusted for another request.
            self.must_close = True
        elif (
            not handler.body_done
            and handler.body_length is not None
            and handler.body_length - handler.body_received > _MAX_DRAIN
        ):
            # Too much unread body to drain after the response: say now that we will close.
            self.must_close = True
        if self.must_close:
            self.keep_alive_10 = False
            headers.append(("Connection", "close"))
        elif self.keep_alive_10:
            if self.content_length is not None or self.bodyless:
                headers.append(("Connection", "keep-alive"))
            else:
                # The body is delimited by closing the connection.
                self.keep_alive_10 = False
        return headers

    def final_info(self) -> ResponseInfo:
        """The response for hooks: what was sent, or else what the application asked for."""
        starter = self.starter
        if self.committed or not starter.started:
            return self.info
        return ResponseInfo(starter.status or "", starter.status_code, list(starter.headers), 0)

    # -- output buffer ---------------------------------------------------------------------

    def _queue(self, data: bytes | None, body_bytes: int = 0) -> None:
        self._body_bytes += body_bytes
        self._pending_body += body_bytes
        if data:
            self._pending.append(data)
            self._pending_size += len(data)
            if self._pending_size >= _SEND_BUFFER:
                self.flush()

    def flush(self) -> None:
        """Send everything queued, in one call."""
        if self._pending:
            data = b"".join(self._pending)
            body_bytes = self._pending_body
            self._pending.clear()
            self._pending_size = self._pending_body = 0
            self.handler.sendall(data)
            self.info.sent += body_bytes

    def send_error(self, status_code: int) -> None:
        """Answer with a small error response instead of the application's, then close."""
        self.must_close = True
        self._pending.clear()
        self._pending_size = self._pending_body = 0
        data, info = _error_response(
            self.conn, status_code, self.handler.config.server_software, self.head
        )
        if not data:
            return
        self.info = info
        self.committed = True
        try:
            self.handler.sendall(data)
        except _PeerGone as exc:
            self.handler.log.debug("Cannot send %d: %s", status_code, exc)
            return
        self.finished = True
