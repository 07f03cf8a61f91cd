"""How a response is framed and serialised: one :class:`Response` per request, from
``start_response`` to the last byte. Sans-IO: it queues bytes, the driver sends them.

Who does what:

- :class:`~gunicorn_fdpass.wsgi.ResponseStarter` implements PEP 3333's ``start_response``
  rules (status and header syntax, ``exc_info``); :class:`Response` owns one.
- :func:`_app_fields` and :meth:`Response._server_fields` are the one place that decides
  what goes on the wire: the application's header fields as sent (whitespace trimmed,
  ``Connection`` replaced by ours, ``Server`` and ``Date`` added unless given,
  ``Content-Length`` checked), and the framing
  (RFC 9112 6.3): no body for HEAD, 204, 304 and a 2xx to CONNECT; else the application's
  Content-Length; else chunked for HTTP/1.1 and closing the connection for HTTP/1.0. Whether
  the head says ``Connection: close`` is asked of :func:`~gunicorn_fdpass.http.keep_alive.closes`,
  the same decision that later ends or keeps the connection.
- Heads (the application's and the server's own error answers) are laid out by
  :mod:`~gunicorn_fdpass.http.serialize`, the one serializer.
- The output queue joins small pieces (status line, header fields, body pieces that are all
  there at once); the driver takes them with :meth:`Response.take` and sends them, and sends
  a ``wsgi.file_wrapper`` file itself (``sendfile()``) after :meth:`Response.file_body`.

The response is reported as a :class:`ResponseInfo`, which the hooks and the access log see.
:class:`Abort` means the response cannot be completed correctly: drop the connection.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from ..errors import FdpassError
from ..wsgi import ResponseStarter, WriteCallable
from .keep_alive import After, Facts, Policy, closes
from .memo import remember
from .request_rules import ParsedRequest
from .serialize import error_message, field_lines, http_date, serialize_head, serialize_head_around

__all__ = ["Abort", "Response", "ResponseInfo"]

# Body pieces that are all available at once (a list response) are joined into sends of
# about this size instead of one syscall per piece.
SEND_BUFFER: Final = 64 * 1024
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


class Abort(FdpassError):
    """The response cannot be completed correctly (already logged): drop the connection."""


def _asked() -> bool:
    """What ``unread_body`` becomes once asked (the head is written only once)."""
    return True


@dataclass(frozen=True, slots=True)
class _AppFields:
    """What a response's status code and the application's header fields decide, before
    the server adds its own fields: the same for every response that repeats them."""

    pairs: tuple[tuple[str, str], ...]  # as sent: whitespace trimmed, Connection dropped
    content_length: int | None
    app_close: bool  # the application's Connection field says close
    has_date: bool
    has_server: bool
    #: ``pairs`` as header lines; None when one of them is a Host field, which
    #: :func:`~gunicorn_fdpass.http.serialize.serialize_head` moves to the front.
    wire: bytes | None


# _AppFields by (status code, the application's header fields): an application answers with
# the same few sets of fields, whose inspection and layout then cost a lookup. Bounded,
# since values such as cookies differ from one response to the next.
_APP_FIELDS: dict[tuple[int, tuple[tuple[str, str], ...]], _AppFields] = {}
_MAX_APP_FIELDS: Final = 512


def _app_fields(app_headers: list[tuple[str, str]], code: int) -> _AppFields:
    """The application's part of the head (see :meth:`Response._final_headers`). Raises
    ValueError for an invalid Content-Length."""
    key = (code, tuple(app_headers))
    known = _APP_FIELDS.get(key)
    if known is not None:
        return known
    pairs: list[tuple[str, str]] = []
    content_length: int | None = None
    app_close = has_date = has_server = has_host = False
    for name, raw_value in app_headers:
        lname = name.lower()
        # RFC 9110 5.5: surrounding whitespace is not part of a field value.
        value = raw_value.strip(" \t")
        if lname == "connection":
            # The only hop-by-hop field wsgi.validate_headers lets through: the server
            # writes its own, honouring a "close" from the application.
            if "close" in (t.strip(" \t").lower() for t in value.split(",")):
                app_close = True
            continue
        if lname == "content-length":
            if code == 204:  # RFC 9110 8.6: never on a 204
                continue
            if (
                not (value.isascii() and value.isdigit())
                or len(value) > _MAX_LENGTH_DIGITS
                or (content_length is not None and int(value) != content_length)
            ):
                raise ValueError(f"invalid Content-Length {value!r}")
            if content_length is not None:
                continue  # an identical repeat: send it once
            content_length = int(value)
        elif lname == "date":
            has_date = True
        elif lname == "server":
            has_server = True
        elif lname == "host":
            has_host = True
        pairs.append((name, value))
    wire = None if has_host else field_lines(pairs)
    fields = _AppFields(tuple(pairs), content_length, app_close, has_date, has_server, wire)
    return remember(_APP_FIELDS, key, fields, _MAX_APP_FIELDS)


def _chunk(data: bytes) -> list[bytes]:
    """One piece of a chunked body (RFC 9112 7.1), never empty: that would end the body."""
    return [b"%x\r\n" % len(data), data, b"\r\n"]


class Response:
    """The response to one request: start_response state, our checks, framing, output queue.

    The body is framed by the application's Content-Length if it gave one (never exceeded;
    falling short drops the connection); otherwise chunked for HTTP/1.1, or delimited by
    closing the connection for HTTP/1.0. HEAD, 204 and 304 responses (and a 2xx to CONNECT,
    the start of a tunnel) never carry body bytes. :meth:`_server_fields` decides all this.

    ``facts``: the exchange's keep-alive facts, which this response completes; ``after``: the
    worker's state; ``unread_body``: asked when the head is written, whether what is left of
    the request body already rules out another request; ``write``: PEP 3333's ``write()``,
    which the driver implements (queue, then send at once).
    """

    # Slots: a response is made for every request, and its attributes are read and set
    # throughout it.
    __slots__ = ("_body_bytes", "_pending", "_pending_body", "_pending_size",
                 "_taken_body", "after", "bodyless", "chunked", "connect",
                 "content_length", "ended", "facts", "finished", "head", "http11", "info",
                 "log", "policy", "server_software", "starter", "unread_body", "uri")

    def __init__(
        self,
        request: ParsedRequest,
        facts: Facts,
        policy: Policy,
        after: After,
        *,
        server_software: str,
        log: Any,
        unread_body: Callable[[], bool],
        write: WriteCallable,
    ) -> None:
        self.facts = facts
        self.policy = policy
        self.after = after
        self.server_software = server_software
        self.log = log
        self.unread_body = unread_body
        self.head = request.method == "HEAD"
        self.connect = request.method == "CONNECT"
        self.http11 = request.version >= (1, 1)
        self.uri = request.target
        # The response sets the starter's headers_sent itself (see committed): no callback
        # back to it, so the two form no reference cycle and both (and whatever the driver
        # hung on them) are freed as soon as the request ends, not by the garbage collector.
        self.starter = ResponseStarter(write)
        self.info = ResponseInfo()
        self.ended = False  # everything is queued
        self.finished = False  # ... and sent
        self.bodyless = False  # body bytes from the app are dropped
        self.chunked = False  # the body goes out in chunks
        self.content_length: int | None = None
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._pending_body = 0  # body bytes in _pending
        self._taken_body = 0  # body bytes taken by the driver, not yet confirmed sent
        self._body_bytes = 0  # body bytes accepted so far, sent or queued

    @property
    def committed(self) -> bool:
        """Status and headers are fixed (queued or sent): the starter's ``headers_sent``,
        one flag for both."""
        return self.starter.headers_sent

    # -- the WSGI side ---------------------------------------------------------------------

    def body(self, data: bytes) -> bool:
        """Queue one piece of the body (empty pieces are skipped: they mean nothing, and an
        empty chunk would end a chunked body). True if enough is queued to send it now."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"response body items must be bytes, not {type(data).__name__}")
        if not data:
            return False
        if not self.committed:
            self._commit()
        if self.bodyless:
            return False
        data = bytes(data)
        if self.content_length is not None:
            room = self.content_length - self._body_bytes
            if len(data) > room:
                if not self.facts.broken:
                    self.log.warning(
                        "Application sent more than its Content-Length (%d) for %s: "
                        "truncated, closing the connection",
                        self.content_length,
                        self.uri,
                    )
                self.facts.broken = True
                data = data[:room]
                if not data:
                    return False
        if self.chunked:
            return self._queue(_chunk(data), len(data))
        return self._queue_one(data, len(data))

    def finish(self) -> None:
        """End the response (the head first if the body was empty); the driver sends the rest.
        Raises :class:`Abort` if the body fell short of its Content-Length."""
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
        self.ended = True

    def file_body(self) -> int | None:
        """A ``wsgi.file_wrapper`` response is about to be sent with ``sendfile()``: commit
        the head and say how many body bytes to send (0: none, the response has no body;
        None: no Content-Length bounds it, iterate the file instead)."""
        if not self.committed:
            self._commit()
        if self.bodyless:
            return 0
        if self.content_length is None:
            return None
        return max(0, self.content_length - self._body_bytes)

    def file_sent(self, count: int) -> None:
        """The driver sent ``count`` body bytes of the file with ``sendfile()``."""
        self._body_bytes += count
        self.info.sent += count

    def error(self, status_code: int) -> bytes:
        """The server's own error answer instead of the application's (with
        ``Connection: close``); b"" if the application's response has begun already."""
        if self.committed:
            return b""
        self.facts.broken = True  # the connection closes after an error answer
        self.unread_body = _asked  # never asked now (no cycle left through the driver)
        self._pending.clear()
        self._pending_size = self._pending_body = 0
        message = error_message(status_code, self.server_software, head=self.head)
        self.info = ResponseInfo(
            f"{status_code} {message.reason}", status_code, message.headers, message.body_length
        )
        self.ended = self.starter.headers_sent = True
        return message.data

    def start(self, status_code: int, reason: str, headers: list[tuple[str, str]]) -> None:
        """``start_response`` for a driver that checked the status (100-999), the reason
        phrase and the header fields itself, with :func:`~gunicorn_fdpass.wsgi.validate_headers`'
        rules: the ASGI cycle, whose fields arrive as bytes and whose field names repeat."""
        starter = self.starter
        if starter.started:
            raise RuntimeError("the response was started already")
        starter.status = f"{status_code} {reason}"
        starter.status_code, starter.reason, starter.headers = status_code, reason, headers

    # -- output queue ----------------------------------------------------------------------

    def take(self) -> bytes:
        """Everything queued, joined (b"" if nothing), for the driver to send; confirm with
        :meth:`sent`."""
        if not self._pending:
            return b""
        data = b"".join(self._pending)
        self._taken_body += self._pending_body
        self._pending.clear()
        self._pending_size = self._pending_body = 0
        return data

    def sent(self) -> None:
        """What :meth:`take` returned went out."""
        self.info.sent += self._taken_body
        self._taken_body = 0
        if self.ended and not self._pending:
            self.finished = True

    def _queue_one(self, part: bytes, body_bytes: int = 0) -> bool:
        """:meth:`_queue` of a single part (the head, a piece of a body that is not chunked)."""
        self._pending.append(part)
        if body_bytes:
            self._body_bytes += body_bytes
            self._pending_body += body_bytes
        size = self._pending_size = self._pending_size + len(part)
        return size >= SEND_BUFFER

    def _queue(self, parts: list[bytes], body_bytes: int = 0) -> bool:
        self._body_bytes += body_bytes
        self._pending_body += body_bytes
        for part in parts:
            self._pending.append(part)
            self._pending_size += len(part)
        return self._pending_size >= SEND_BUFFER

    # -- status line and headers -----------------------------------------------------------

    def _commit(self) -> None:
        starter = self.starter
        if not starter.started:
            raise RuntimeError("the application did not call start_response()")
        code = starter.status_code
        if code < 200:
            raise ValueError(f"status {starter.status!r} cannot be a final response")
        fields = _app_fields(starter.headers, code)
        defaults, extras = self._server_fields(fields, code)
        headers = [*defaults, *fields.pairs, *extras]
        starter.headers_sent = True
        self.info = ResponseInfo(starter.status or "", code, headers, 0)
        if fields.wire is None:
            head = serialize_head(code, starter.reason, headers)
        else:
            head = serialize_head_around(code, starter.reason, defaults, fields.wire, extras)
        self._queue_one(head)

    def _server_fields(
        self, fields: _AppFields, code: int
    ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """The one place that decides what goes on the wire besides the application's
        fields (as sent: whitespace trimmed, ``Connection`` replaced by ours, ``Content-Length``
        checked; see :func:`_app_fields`): ``Server`` and ``Date`` in front unless given, the
        framing and ``Connection`` after them. Returns (fields before, fields after)."""
        facts = self.facts
        if fields.app_close:
            facts.app_close = True
        self.content_length = fields.content_length
        defaults: list[tuple[str, str]] = []
        software = self.server_software
        if not fields.has_server and software:
            defaults.append(("Server", software))
        if not fields.has_date:
            defaults.append(("Date", http_date()))

        # Asked once; dropping it afterwards breaks the cycle through the driver that owns
        # this response and the callable (see __init__).
        unread_body, self.unread_body = self.unread_body, _asked
        facts.unread_body = unread_body()
        # The framing (RFC 9112 6.3), decided here and nowhere else: no body at all for HEAD,
        # 204, 304 and a 2xx to CONNECT (a tunnel starts); else the application's
        # Content-Length; else chunked for an HTTP/1.1 client, and the end of the connection
        # for an HTTP/1.0 one. A HEAD response announces what a GET would get (RFC 9110 9.3.2).
        extras: list[tuple[str, str]] = []
        no_body_status = code in (204, 304) or (self.connect and code < 300)
        self.bodyless = self.head or no_body_status
        if self.content_length is None and not no_body_status:
            if self.http11:
                extras.append(("Transfer-Encoding", "chunked"))
                self.chunked = not self.head
            elif not self.head:
                facts.close_delimited = True
        if closes(facts, self.policy, self.after):
            extras.append(("Connection", "close"))
        elif facts.keep_alive_10:
            extras.append(("Connection", "keep-alive"))
        return defaults, extras

    def final_info(self) -> ResponseInfo:
        """The response for hooks: what was sent, or else what the application asked for."""
        starter = self.starter
        if self.committed or not starter.started:
            return self.info
        return ResponseInfo(starter.status or "", starter.status_code, list(starter.headers), 0)
