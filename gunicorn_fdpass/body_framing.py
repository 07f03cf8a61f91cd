"""Request body framing (RFC 9112 6 and 7): Content-Length and chunked decoders. Pure.

Sans-IO: a decoder is fed the connection's receive buffer (a ``bytearray``), consumes what
belongs to the body from its front and returns the body bytes it decoded. It never reads past
the end of the body, so whatever stays in the buffer belongs to the next request. Errors raise
:class:`~gunicorn_fdpass.request_rules.Rejected` with Gunicorn's status (400, or 431 for an
oversized trailer section).
"""

from __future__ import annotations

import re
from typing import Final, Protocol

from .request_rules import ParsedRequest, Rejected, RequestRules, check_fields

__all__ = ["BodyDecoder", "ChunkedDecoder", "LengthDecoder", "decoder_for"]

_HEX_RE: Final = re.compile(rb"[0-9A-Fa-f]+")
# RFC 9112 7.1.1: chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ] )
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
_CHUNK_EXT_RE: Final = re.compile(
    rb"(?:[ \t]*;[ \t]*" + _TOKEN + rb"(?:[ \t]*=[ \t]*(?:" + _TOKEN + rb"|" + _QUOTED + rb"))?)*"
)
_BARE_LF_RE: Final = re.compile(rb"(?<!\r)\n")


class BodyDecoder(Protocol):
    """Decodes one request body out of a receive buffer."""

    done: bool

    def feed(self, buf: bytearray) -> bytes:
        """Consume body bytes from the front of ``buf`` and return the decoded data.

        ``b""`` with ``done`` False means more input is needed. Raises Rejected.
        """
        ...

    def eof_error(self) -> Rejected | None:
        """What the connection ending before the body did means (None: not an HTTP error,
        just a client that went away)."""
        ...


class LengthDecoder:
    """A body of exactly ``length`` bytes."""

    def __init__(self, length: int) -> None:
        self.remaining = length
        self.done = length == 0

    def feed(self, buf: bytearray) -> bytes:
        take = min(self.remaining, len(buf))
        if not take:
            return b""
        data = bytes(buf[:take])
        del buf[:take]
        self.remaining -= take
        self.done = self.remaining == 0
        return data

    def eof_error(self) -> Rejected | None:
        return None


_SIZE, _DATA, _DATA_END, _TRAILER = range(4)


class ChunkedDecoder:
    """A chunked body, with its chunk extensions and trailer section validated like
    Gunicorn does (the trailer fields are checked and dropped)."""

    def __init__(self, rules: RequestRules, request: ParsedRequest) -> None:
        self.rules = rules
        self.request = request
        self.done = False
        self._state = _SIZE
        self._left = 0  # bytes left in the current chunk
        self._line_limit = rules.field_size
        self._scanned = 0  # bytes of an incomplete size line or trailer already scanned

    def feed(self, buf: bytearray) -> bytes:
        out: list[bytes] = []
        while buf and not self.done:
            if self._state == _DATA:
                take = min(self._left, len(buf))
                out.append(bytes(buf[:take]))
                del buf[:take]
                self._left -= take
                if self._left == 0:
                    self._state = _DATA_END
            elif self._state == _SIZE:
                if not self._size_line(buf):
                    break
            elif self._state == _DATA_END:
                if len(buf) < 2:
                    if buf[:1] != b"\r":
                        raise Rejected(400, "chunk data not followed by CRLF")
                    break
                if buf[:2] != b"\r\n":
                    raise Rejected(400, "chunk data not followed by CRLF")
                del buf[:2]
                self._state = _SIZE
            elif not self._trailer(buf):
                break
        return b"".join(out)

    def _size_line(self, buf: bytearray) -> bool:
        end = buf.find(b"\r\n", max(0, self._scanned - 1))
        if end < 0:
            if b"\n" in buf:
                raise Rejected(400, "bare LF in a chunk size line")
            if len(buf) > self._line_limit:
                raise Rejected(400, "chunk size line too long")
            self._scanned = len(buf)
            return False
        self._scanned = 0
        line = bytes(buf[:end])
        del buf[: end + 2]
        size, semicolon, ext = line.partition(b";")
        if semicolon:
            if b"\r" in ext or b"\n" in ext:
                raise Rejected(400, "invalid chunk extension")
            size = size.rstrip(b" \t")  # RFC 9112 7.1.1: BWS only before an extension
        if not _HEX_RE.fullmatch(size):
            raise Rejected(400, "invalid chunk size")
        if semicolon and not _CHUNK_EXT_RE.fullmatch(b";" + ext):
            raise Rejected(400, "invalid chunk extension")
        self._left = int(size, 16)
        self._state = _DATA if self._left else _TRAILER
        return True

    def _trailer(self, buf: bytearray) -> bool:
        if buf[:2] == b"\r\n":
            del buf[:2]
            self.done = True
            return True
        if len(buf) < 2:
            return False
        end = buf.find(b"\r\n\r\n", max(0, self._scanned - 3))
        if end < 0:
            if _BARE_LF_RE.search(buf, max(0, self._scanned - 1)):
                raise Rejected(400, "bare LF in the trailer section")
            if len(buf) > self.rules.max_header_block:
                raise Rejected(431, "trailer section too large")
            self._scanned = len(buf)
            return False
        block = bytes(buf[: end + 2])
        if _BARE_LF_RE.search(block):
            raise Rejected(400, "bare LF in the trailer section")
        del buf[: end + 4]
        check_fields(block, self.request, self.rules, trusted=False, trailer=True)
        self.done = True
        return True

    def eof_error(self) -> Rejected | None:
        return Rejected(400, "chunked body ended before its last chunk")


def decoder_for(request: ParsedRequest, rules: RequestRules) -> BodyDecoder:
    """The decoder of ``request``'s body (a request without framing has none: length 0)."""
    if request.chunked:
        return ChunkedDecoder(rules, request)
    return LengthDecoder(request.content_length or 0)
