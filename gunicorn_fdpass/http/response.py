"""How a response is written: one :class:`Response` per request, from ``start_response`` to
the last byte, without h11.

Who does what:

- :class:`~gunicorn_fdpass.wsgi.ResponseStarter` implements PEP 3333's ``start_response``
  rules (status and header syntax, ``exc_info``); :class:`Response` owns one and decides the
  rest.
- :meth:`Response._final_headers` is the one place that decides what goes on the wire: the
  application's header fields as sent (whitespace trimmed, ``Connection`` replaced by ours,
  ``Server`` and ``Date`` added unless given, ``Content-Length`` checked), and the framing
  (RFC 9112 6.3): no body for HEAD, 204, 304 and a 2xx to CONNECT; else the application's
  Content-Length; else chunked for HTTP/1.1 and closing the connection for HTTP/1.0. It also
  decides whether the response says ``Connection: close`` or ``keep-alive``.
- The output buffer joins small pieces (status line, header fields, body pieces that are all
  there at once) into one send; ``wsgi.file_wrapper`` files go out with ``sendfile()``.
- :func:`error_response` gives the server's own small error responses (from
  :mod:`~gunicorn_fdpass.http.serialize`, when the request's h11 connection says a response
  may still begin).

The bytes are what h11 wrote for the same decisions, when it still wrote responses.

The writer knows nothing of the connection loop: it sends through a :class:`ResponseSink`
(in practice the handler of :mod:`~gunicorn_fdpass.connection`), and reports what it sent as
a :class:`ResponseInfo`, which the hooks and the access log see. Failures reach the caller as
exceptions: :class:`ClientGone` (the client cannot be sent to any more) and :class:`Abort` (the
response cannot be completed correctly; the connection must be dropped).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import IO, Any, Final, Protocol

import h11

from ..wsgi import FileWrapper, ResponseStarter
from .request_rules import ParsedRequest
from .serialize import error_message, http_date, serialize_head

__all__ = [
    "Abort",
    "ClientGone",
    "Response",
    "ResponseInfo",
    "ResponseSink",
    "error_response",
]

# Body pieces that are all available at once (a list response) are joined into sends of
# about this size instead of one syscall per piece.
_SEND_BUFFER = 64 * 1024
# The end of a chunked body: the last chunk and an empty trailer section.
_LAST_CHUNK: Final = b"0\r\n\r\n"
# RFC 9110 8.6: Content-Length is 1*DIGIT; h11, which wrote responses before, refused more
# than 20 digits, and an application asking for more still gets a 500.
_MAX_LENGTH_DIGITS: Final = 20


@dataclass
class ResponseInfo:
    """The response as hooks and the access log see it (``resp``)."""

    status: str = ""  # "200 OK"
    status_code: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    sent: int = 0  # body bytes sent


class ClientGone(Exception):
    """Sending to the client failed: nothing more can be sent on this connection."""


class Abort(Exception):
    """The response cannot be completed correctly (already logged): drop the connection."""


class ResponseSink(Protocol):
    """The connection a response goes out on, as :class:`Response` sees it.

    :class:`gunicorn_fdpass.connection._Handler` provides it for its client socket.
    """

    @property
    def plain(self) -> bool:
        """False for TLS, whose encryption happens in user space: no ``sendfile()``."""
        ...

    def blocking(self) -> bool:
        """False if the socket is non-blocking, which ``sendfile()`` refuses."""
        ...

    def sendall(self, data: bytes) -> None:
        """Send all of ``data``; :class:`ClientGone` if the connection failed, now or before."""
        ...

    def sendfile(self, file: IO[bytes], offset: int, count: int) -> int:
        """Send up to ``count`` bytes of ``file`` from ``offset`` with ``sendfile()``; the
        number sent. :class:`ClientGone` as for :meth:`sendall`."""
        ...

    def response_begun(self) -> None:
        """The status line is queued: an interim (100 Continue) response is too late now."""
        ...

    def unread_body_forbids_reuse(self) -> bool:
        """True if what is left of the request body already rules out another request on the
        connection, so the response must say ``Connection: close``."""
        ...


def error_response(
    conn: h11.Connection, status_code: int, server_software: str, head: bool
) -> tuple[bytes, ResponseInfo]:
    """A small plain-text error response with ``Connection: close``, if the request's h11
    connection still allows a response to begin.

    Returns the bytes to send (empty if a response was already begun) and the response as the
    hooks see it.
    """
    message = error_message(status_code, server_software, head=head)
    try:
        # h11 only checks here that a response may still begin; the bytes are ours.
        conn.send(h11.Response(status_code=status_code,
                               headers=[("Content-Length", "0"), ("Connection", "close")]))
    except h11.LocalProtocolError:
        return b"", ResponseInfo()
    info = ResponseInfo(f"{status_code} {message.reason}", status_code, message.headers,
                        message.body_length)
    return message.data, info


def _chunk(data: bytes) -> list[bytes]:
    """One piece of a chunked body (RFC 9112 7.1), never empty: that would end the body."""
    return [b"%x\r\n" % len(data), data, b"\r\n"]


class Response:
    """The response to one request: start_response state, our checks, framing, output buffer.

    The body is framed by the application's Content-Length if it gave one (never exceeded;
    falling short drops the connection); otherwise chunked for HTTP/1.1, or delimited by
    closing the connection for HTTP/1.0. HEAD, 204 and 304 responses (and a 2xx to CONNECT,
    the start of a tunnel) never carry body bytes. :meth:`_final_headers` decides all this.

    ``conn`` is the request's h11 connection, used only for :meth:`send_error`.
    ``want_close``: the connection closes after this response whatever the application says;
    ``keep_alive_10``: an HTTP/1.0 client asked for keep-alive.
    """

    def __init__(
        self,
        sink: ResponseSink,
        conn: h11.Connection,
        request: ParsedRequest,
        *,
        server_software: str,
        log: Any,
        want_close: bool,
        keep_alive_10: bool,
    ) -> None:
        self.sink = sink
        self.conn = conn
        self.server_software = server_software
        self.log = log
        self.head = request.method == "HEAD"
        self.connect = request.method == "CONNECT"
        self.http11 = request.version >= (1, 1)
        self.uri = request.target
        self.starter = ResponseStarter(self.write, lambda: self.committed)
        self.info = ResponseInfo()
        self.must_close = want_close
        self.keep_alive_10 = keep_alive_10 and not want_close
        self.committed = False  # status and headers are fixed (queued or sent)
        self.finished = False  # the whole response was sent
        self.bodyless = False  # body bytes from the app are dropped
        self.chunked = False  # the body goes out in chunks
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
        """Queue one piece of the body (empty pieces are skipped: they mean nothing, and an
        empty chunk would end a chunked body)."""
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
                    self.log.warning(
                        "Application sent more than its Content-Length (%d) for %s: "
                        "truncated, closing the connection",
                        self.content_length,
                        self.uri,
                    )
                self.must_close = True
                data = data[:room]
                if not data:
                    return
        self._queue(_chunk(data) if self.chunked else [data], len(data))

    def finish(self) -> None:
        """End the response (sending the head first if the body was empty)."""
        if not self.committed:
            self._commit()
        if (
            not self.bodyless
            and self.content_length is not None
            and self._body_bytes < self.content_length
        ):
            self.log.error(
                "Application sent %d of the %d bytes of its Content-Length for %s: "
                "closing the connection",
                self._body_bytes,
                self.content_length,
                self.uri,
            )
            raise Abort
        if self.chunked:
            self._queue([_LAST_CHUNK])
        self.flush()
        self.finished = True

    def sendfile(self, wrapper: FileWrapper) -> bool:
        """Send a wsgi.file_wrapper's file with sendfile(); False to fall back to iterating
        (no descriptor, no Content-Length to bound it, or TLS, whose encryption happens in
        user space)."""
        if not self.sink.plain or not self.starter.started:
            return False
        fd = wrapper.fileno()
        if fd is None:
            return False
        if not self.committed:
            self._commit()
        if self.bodyless:
            return True
        if self.content_length is None or not self.sink.blocking():
            return False
        remaining = self.content_length - self._body_bytes
        if remaining <= 0:
            return True
        try:
            offset = wrapper.filelike.tell()
        except (OSError, ValueError, AttributeError):
            offset = os.lseek(fd, 0, os.SEEK_CUR)
        self.flush()  # the head goes first
        sent = self.sink.sendfile(wrapper.filelike, offset, remaining)
        if sent:
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
        headers = self._final_headers(starter.headers, code)
        data = serialize_head(code, starter.reason, headers)
        self.committed = True
        self.sink.response_begun()
        self.info = ResponseInfo(starter.status or "", code, headers, 0)
        self._queue([data])

    def _final_headers(
        self, app_headers: list[tuple[str, str]], code: int
    ) -> list[tuple[str, str]]:
        """The header fields to send, in order; decides the framing and whether to close."""
        headers: list[tuple[str, str]] = []
        has_date = has_server = False
        for name, raw_value in app_headers:
            lname = name.lower()
            # RFC 9110 5.5: surrounding whitespace is not part of a field value.
            value = raw_value.strip(" \t")
            if lname == "connection":
                # The only hop-by-hop field wsgi.validate_headers lets through: the server
                # writes its own, honouring a "close" from the application.
                if "close" in (t.strip(" \t").lower() for t in value.split(",")):
                    self.must_close = True
                continue
            if lname == "content-length":
                if code == 204:  # RFC 9110 8.6: never on a 204
                    continue
                if (
                    not (value.isascii() and value.isdigit())
                    or len(value) > _MAX_LENGTH_DIGITS
                    or (self.content_length is not None and int(value) != self.content_length)
                ):
                    raise ValueError(f"invalid Content-Length {value!r}")
                if self.content_length is not None:
                    continue  # an identical repeat: send it once
                self.content_length = int(value)
            elif lname == "date":
                has_date = True
            elif lname == "server":
                has_server = True
            headers.append((name, value))
        defaults: list[tuple[str, str]] = []
        software = self.server_software
        if not has_server and software:
            defaults.append(("Server", software))
        if not has_date:
            defaults.append(("Date", http_date()))
        headers = defaults + headers

        if self.sink.unread_body_forbids_reuse():
            self.must_close = True
        # The framing (RFC 9112 6.3), decided here and nowhere else: no body at all for HEAD,
        # 204, 304 and a 2xx to CONNECT (a tunnel starts); else the application's
        # Content-Length; else chunked for an HTTP/1.1 client, and the end of the connection
        # for an HTTP/1.0 one. A HEAD response announces what a GET would get (RFC 9110 9.3.2).
        no_body_status = code in (204, 304) or (self.connect and code < 300)
        self.bodyless = self.head or no_body_status
        if self.content_length is None and not no_body_status:
            if self.http11:
                headers.append(("Transfer-Encoding", "chunked"))
                self.chunked = not self.head
            elif not self.head:
                self.must_close = True  # the body is delimited by closing the connection
        if self.must_close:
            self.keep_alive_10 = False
            headers.append(("Connection", "close"))
        elif self.keep_alive_10:
            headers.append(("Connection", "keep-alive"))
        return headers

    def final_info(self) -> ResponseInfo:
        """The response for hooks: what was sent, or else what the application asked for."""
        starter = self.starter
        if self.committed or not starter.started:
            return self.info
        return ResponseInfo(starter.status or "", starter.status_code, list(starter.headers), 0)

    # -- output buffer ---------------------------------------------------------------------

    def _queue(self, parts: list[bytes], body_bytes: int = 0) -> None:
        """Queue the pieces of one part of the response (not joined: that happens once, in
        :meth:`flush`)."""
        self._body_bytes += body_bytes
        self._pending_body += body_bytes
        if parts:
            for part in parts:
                self._pending.append(part)
                self._pending_size += len(part)
            if self._pending_size >= _SEND_BUFFER:
                self.flush()

    def flush(self) -> None:
        """Send everything queued, in one call."""
        if self._pending:
            data = b"".join(self._pending)
            body_bytes = self._pending_body
            self._pending.clear()
            self._pending_size = self._pending_body = 0
            self.sink.sendall(data)
            self.info.sent += body_bytes

    def send_error(self, status_code: int) -> None:
        """Answer with a small error response instead of the application's, then close."""
        self.must_close = True
        self._pending.clear()
        self._pending_size = self._pending_body = 0
        data, info = error_response(self.conn, status_code, self.server_software, self.head)
        if not data:
            return
        self.info = info
        self.committed = True
        try:
            self.sink.sendall(data)
        except ClientGone as exc:
            self.log.debug("Cannot send %d: %s", status_code, exc)
            return
        self.finished = True
