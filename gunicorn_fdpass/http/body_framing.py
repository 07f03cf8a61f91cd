"""A request body read through h11, with Gunicorn's chunk rules on top. Sans-IO.

:class:`RequestBody` takes the body bytes through the h11 connection that parsed the request
head (:mod:`~gunicorn_fdpass.http.request_head`): ``Data`` and ``EndOfMessage`` events. h11
alone decides where the body ends. For a Content-Length body h11 is never given more than the
declared length, so it never holds bytes of the next request; for a chunked body
it may, and they come back through ``Connection.trailing_data``.

h11 reads chunk-size lines and the trailer section more leniently than Gunicorn (it does not
parse chunk extensions, allows whitespace after the size, bare LF line endings and obs-fold in
the trailer section, and any trailer field). So at every chunk boundary this module looks at
exactly the bytes h11 consumed there and applies Gunicorn's rules to them. This check never
decides where anything ends; it can only refuse.

Errors raise :class:`~gunicorn_fdpass.http.request_rules.Rejected` with the status to answer with.
"""

from __future__ import annotations

import re
from typing import Any, Final, cast

import h11

from .fields import check_trailer
from .request_rules import ParsedRequest, Rejected, RequestRules

__all__ = ["CHUNKED_FEED", "RequestBody"]

_HEX_RE: Final = re.compile(rb"[0-9A-Fa-f]+")
# RFC 9112 7.1.1: chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ] )
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
_CHUNK_EXT_RE: Final = re.compile(
    rb"(?:[ \t]*;[ \t]*" + _TOKEN + rb"(?:[ \t]*=[ \t]*(?:" + _TOKEN + rb"|" + _QUOTED + rb"))?)*"
)
_BARE_LF_RE: Final = re.compile(rb"(?<!\r)\n")

#: At most this many bytes of a chunked body are given to h11 at once. At a chunk boundary
#: the bytes h11 holds are copied to see what it consumed, so this bounds that copy per chunk
#: (a body of tiny chunks would otherwise cost a copy of a whole receive buffer per chunk).
CHUNKED_FEED: Final = 16 * 1024
# h11's states once a whole request was read: MUST_CLOSE after any HTTP/1.0 exchange (even one
# kept alive: h11 never sees our responses, each request gets a fresh h11 connection), and
# MIGHT_SWITCH_PROTOCOL after a request with Upgrade, which is never accepted here.
_MIGHT_SWITCH: Final = h11.MIGHT_SWITCH_PROTOCOL  # type: ignore[attr-defined]  # not in __all__
_REQUEST_READ: Final = (h11.DONE, h11.MUST_CLOSE, _MIGHT_SWITCH)


class RequestBody:
    """The body of one request as h11 frames it, with Gunicorn's chunk rules on top.

    Drive it with :meth:`next_data`; when that returns None, give it more bytes with
    :meth:`receive`, at most :meth:`wants` of them.
    """

    # Slots: made for every connection or request; their attributes are read throughout.
    __slots__ = ("_check", "_ended_without_h11", "_unfed", "chunked", "conn", "done", "length",
                 "received")

    def __init__(
        self, conn: h11.Connection | None, request: ParsedRequest, rules: RequestRules
    ) -> None:
        #: The h11 connection that parsed the head and frames the body; None for an empty
        #: body, which needs no h11 (see request_head._h11_event).
        self.conn = conn
        self.chunked = request.chunked
        self.length = None if request.chunked else (request.content_length or 0)
        self.received = 0  # body bytes returned so far
        self.done = False
        self._unfed = self.length or 0  # Content-Length bytes not yet given to h11
        self._check = _ChunkCheck(rules, request) if request.chunked else None
        # An empty body is over before it starts. h11 would only confirm it (its
        # EndOfMessage, a sixth of the cost of parsing a small head): it was given exactly
        # the head, so nothing follows in it and nothing can be refused.
        self._ended_without_h11 = not self.chunked and not self._unfed
        if self._ended_without_h11:
            self.done = True

    @property
    def remaining(self) -> int | None:
        """Content-Length bytes not yet read (None for a chunked body)."""
        return None if self.length is None else self.length - self.received

    def wants(self) -> int:
        """How many more bytes h11 may be given now."""
        return CHUNKED_FEED if self.chunked else self._unfed

    def receive(self, data: bytes) -> None:
        """Give h11 the next bytes of the connection (never empty, never more than wants())."""
        if not self.chunked:
            self._unfed -= len(data)
        assert self.conn is not None  # a body to read came with its h11 connection
        self.conn.receive_data(data)

    def next_data(self) -> bytes | None:
        """The next piece of the body; ``b""`` at its end, None if h11 needs more bytes.

        Raises :class:`Rejected`.
        """
        if self.done:
            return b""
        conn = self.conn
        assert conn is not None  # a body to read came with its h11 connection
        check = self._check
        while True:
            at_boundary = check is not None and check.at_boundary
            if at_boundary:
                before = conn.trailing_data[0]
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise Rejected(exc.error_status_hint, f"invalid body: {exc}") from None
            if at_boundary:
                assert check is not None
                after = conn.trailing_data[0]
                check.after_event(before[: len(before) - len(after)], event, after)
            elif check is not None and type(event) is h11.Data and event.chunk_end:
                check.at_boundary = True  # next: the CRLF after the data, then a size line
            if type(event) is h11.Data:
                data = _data(event)
                if data:
                    self.received += len(data)
                    return bytes(data)
                continue
            if type(event) is h11.EndOfMessage:
                self.done = True
                return b""
            if event is h11.NEED_DATA:
                if not self.wants():  # cannot happen: h11 counts the same Content-Length
                    raise Rejected(400, "h11 wants more than the Content-Length")
                return None
            raise Rejected(400, f"unexpected event in a request body: {event!r}")

    def eof_error(self) -> Rejected | None:
        """What the connection ending inside the body means (None: not an HTTP error, just
        a client that went away)."""
        return Rejected(400, "chunked body ended before its last chunk") if self.chunked else None

    def trailing(self) -> bytes | None:
        """Once the body was read to its end: the bytes h11 read past it (the start of the
        next request), or None if h11 does not hold the request complete (then the connection
        cannot carry another one)."""
        if self._ended_without_h11:
            return b""  # no body: nothing was read past the head
        conn = self.conn
        assert conn is not None  # a body read to its end through h11
        if not self.done or conn.their_state not in _REQUEST_READ:
            return None
        return bytes(conn.trailing_data[0])


def _data(event: h11.Data) -> bytes | bytearray:
    """A Data event's bytes, read untyped: h11 hands out a bytearray where its type says
    bytes, which the compiled module (mypyc) would refuse."""
    data: bytes | bytearray = cast(Any, event).data
    return data


class _ChunkCheck:
    """Gunicorn's rules for the chunk-size lines and trailer section h11 consumed.

    Told, after each h11 event at a chunk boundary, which bytes h11 took during that call
    (``consumed``) and which it still holds (``pending``). At a boundary h11 takes, possibly
    over several calls: the CRLF ending the previous chunk's data (h11 checks it), then one
    size line up to the first CRLF, then either chunk data or, after a zero size, the trailer
    section up to its blank line.
    """

    def __init__(self, rules: RequestRules, request: ParsedRequest) -> None:
        self.rules = rules
        self.request = request
        self.at_boundary = True
        self._skip = 0  # the previous chunk's CRLF, in front of the size line (none at first)
        self._raw = bytearray()  # what h11 consumed since the boundary

    def after_event(self, consumed: bytes, event: object, pending: bytes) -> None:
        self._raw += consumed
        if type(event) is h11.Data:
            header = bytes(self._raw[self._skip : len(self._raw) - len(_data(event))])
            self._size_line(header)
            self._raw.clear()
            self._skip = 2
            self.at_boundary = event.chunk_end
        elif type(event) is h11.EndOfMessage:
            rest = bytes(self._raw[self._skip :])
            line_end = rest.find(b"\r\n") + 2
            self._size_line(rest[:line_end])
            self._trailer(rest[line_end:])
            self.at_boundary = False
        elif event is h11.NEED_DATA:
            self._pending(bytes(self._raw[self._skip :]) + pending)

    def _size_line(self, line: bytes) -> None:
        """A chunk-size line as h11 took it (up to and including its CRLF)."""
        if len(line) > self.rules.field_size:
            raise Rejected(400, "chunk size line too long")
        size, semicolon, ext = line[:-2].partition(b";")
        if semicolon:
            if b"\r" in ext or b"\n" in ext:
                raise Rejected(400, "invalid chunk extension")
            size = size.rstrip(b" \t")  # RFC 9112 7.1.1: BWS only before an extension
        if not _HEX_RE.fullmatch(size):
            raise Rejected(400, "invalid chunk size")
        if semicolon and not _CHUNK_EXT_RE.fullmatch(b";" + ext):
            raise Rejected(400, "invalid chunk extension")

    def _trailer(self, block: bytes) -> None:
        """The trailer section as h11 took it, with its final blank line."""
        if _BARE_LF_RE.search(block):
            raise Rejected(400, "bare LF in the trailer section")
        if len(block) > self.rules.max_header_block:
            raise Rejected(431, "trailer section too large")
        if len(block) > 2:
            check_trailer(block[:-2], self.request, self.rules)

    def _pending(self, rest: bytes) -> None:
        """h11 waits for more at a boundary; ``rest`` is everything from the size line on.

        Refuse at once what can never become acceptable, instead of waiting for more bytes
        (or for the client to give up): h11 only ends these lines at CRLF.
        """
        line_end = rest.find(b"\r\n")
        if line_end < 0:  # the size line is still incomplete
            if b"\n" in rest:
                raise Rejected(400, "bare LF in a chunk size line")
            if len(rest) > self.rules.field_size:
                raise Rejected(400, "chunk size line too long")
            return
        size = rest[:line_end].partition(b";")[0].strip(b" \t")
        in_trailer = _HEX_RE.fullmatch(size) is not None and int(size, 16) == 0
        if in_trailer and _BARE_LF_RE.search(rest, line_end + 2):
            raise Rejected(400, "bare LF in the trailer section")
