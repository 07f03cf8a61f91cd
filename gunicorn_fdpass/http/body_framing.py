"""A validated request handed to h11, and its body read through h11. Sans-IO.

:func:`start_request` gives h11 the request head that :mod:`~gunicorn_fdpass.request_rules`
accepted, **regenerated from the validator's decision** instead of the client's bytes: the
request line, a placeholder ``Host``, exactly one framing field (``Content-Length: N`` or
``Transfer-Encoding: chunked``, or none for an empty body), ``Connection: close`` when the
connection must end, ``Expect: 100-continue`` when the client waits for it. h11 therefore
frames the body exactly as the validator decided (same length or chunked, same version, same
keep-alive), and never re-parses the client's header fields.

:class:`RequestBody` then takes the body bytes through h11 (``Data`` and ``EndOfMessage``
events). h11 alone decides where the body ends. For a Content-Length body h11 is never given
more than the declared length, so it never holds bytes of the next request; for a chunked body
it may, and they come back through ``Connection.trailing_data``.

h11 reads chunk-size lines and the trailer section more leniently than Gunicorn (it does not
parse chunk extensions, allows whitespace after the size, bare LF line endings and obs-fold in
the trailer section, and any trailer field). So at every chunk boundary this module looks at
exactly the bytes h11 consumed there and applies Gunicorn's rules to them. This check never
decides where anything ends; it can only refuse.

Errors raise :class:`~gunicorn_fdpass.request_rules.Rejected` with the status to answer with.
"""

from __future__ import annotations

import re
from typing import Final

import h11

from .request_rules import ParsedRequest, Rejected, RequestRules, check_fields

__all__ = ["CHUNKED_FEED", "RequestBody", "h11_head", "start_request"]

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


def h11_head(request: ParsedRequest, *, close: bool) -> bytes:
    """The request head h11 sees for ``request``: only what h11 needs to frame and to keep
    its state (method for HEAD and CONNECT, version, the one framing field, close, 100-continue).
    """
    major, minor = request.version
    lines = [f"{request.method} {request.target} HTTP/{major}.{minor}\r\nHost: h\r\n"]
    if request.chunked:
        lines.append("Transfer-Encoding: chunked\r\n")
    elif request.content_length:
        lines.append(f"Content-Length: {request.content_length}\r\n")
    if close:
        lines.append("Connection: close\r\n")
    if request.expect_continue:
        lines.append("Expect: 100-continue\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")


def start_request(
    conn: h11.Connection, request: ParsedRequest, rules: RequestRules, *, close: bool
) -> RequestBody:
    """Give ``conn`` (a server-side h11 connection in the IDLE state, holding no bytes) the head
    of an accepted ``request`` and return its body reader.

    Raises :class:`Rejected` with h11's status if h11 refuses what the validator accepted (a
    Content-Length of 20 digits or more is the one known case).
    """
    conn.receive_data(h11_head(request, close=close))
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError as exc:
        raise Rejected(exc.error_status_hint, f"refused by h11: {exc}") from None
    if type(event) is not h11.Request:  # cannot happen: h11 was given one complete head
        raise Rejected(400, f"h11 did not take the request head ({event!r})")
    return RequestBody(conn, request, rules)


class RequestBody:
    """The body of one request as h11 frames it, with Gunicorn's chunk rules on top.

    Drive it with :meth:`next_data`; when that returns None, give it more bytes with
    :meth:`receive`, at most :meth:`wants` of them.
    """

    def __init__(self, conn: h11.Connection, request: ParsedRequest, rules: RequestRules) -> None:
        self.conn = conn
        self.chunked = request.chunked
        self.length = None if request.chunked else (request.content_length or 0)
        self.received = 0  # body bytes returned so far
        self.done = False
        self._unfed = self.length or 0  # Content-Length bytes not yet given to h11
        self._check = _ChunkCheck(rules, request) if request.chunked else None
        if not self.chunked and not self._unfed:
            self._expect_end()  # an empty body: h11 ends the message at once

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
        self.conn.receive_data(data)

    def next_data(self) -> bytes | None:
        """The next piece of the body; ``b""`` at its end, None if h11 needs more bytes.

        Raises :class:`Rejected`.
        """
        if self.done:
            return b""
        conn = self.conn
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
                if event.data:
                    self.received += len(event.data)
                    return bytes(event.data)
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

    def _expect_end(self) -> None:
        event = self.conn.next_event()
        if type(event) is not h11.EndOfMessage:  # cannot happen for a zero-length body
            raise Rejected(400, f"h11 did not end an empty body ({event!r})")
        self.done = True


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
            header = bytes(self._raw[self._skip : len(self._raw) - len(event.data)])
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
            check_fields(block[:-2], self.request, self.rules, trusted=False, trailer=True)

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
