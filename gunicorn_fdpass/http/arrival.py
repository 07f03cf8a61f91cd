"""What the first bytes of a connection mean, while they wait in the master. Pure.

The master peeks at what a client sent (nothing consumed) and asks :func:`classify` what to do
with it: wait for more, hand the connection to a worker now, keep it until its request body
has arrived too, or answer it at once (bytes that cannot begin a request, a TLS ClientHello on
a plain port, a bad or forbidden PROXY header). This is the one place that decides it: the
master's intake calls it, and so may any faster path in front of it.

It only ever decides *when* a connection goes to a worker, never how its request is read: the
worker parses everything again and is the one that refuses a bad head or body with
Gunicorn's status. Whenever something looks unusual here (an odd framing field, a chunk that
does not parse, a body over the bound, ``Expect``), the verdict is simply "hand it over now",
which is what happened before the master waited for bodies at all.

::

    kind     value                   meaning
    EMPTY    0                       nothing received yet
    PARTIAL  0                       a request (or PROXY header) began; its head is not all here
    READY    0                       hand over now (whole request, or the worker decides)
    BODY     bytes needed, or 0      the head is there; the body (Content-Length: that many bytes
                                     from the start; chunked: 0, its end not seen) is on its way
    REFUSE   status (400, 403)       answer that status now and close (``reason`` says why)
    TLS      400                     a TLS ClientHello on a plain-HTTP listener: 400 and a warning
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum
from typing import Final, NamedTuple

from . import proxy_protocol
from .head import END_OF_HEAD
from .request_rules import TOKEN, Rejected

__all__ = ["READY", "ArrivalRules", "Kind", "Verdict", "chunked_end", "classify"]


class Kind(IntEnum):
    """What to do with a connection (see the module docstring)."""

    EMPTY = 0
    PARTIAL = 1
    READY = 2
    BODY = 3
    REFUSE = 4
    TLS = 5


class Verdict(NamedTuple):
    """A :class:`Kind`, its value (bytes needed, or a status) and, to refuse, why."""

    kind: Kind
    value: int = 0
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ArrivalRules:
    """What :func:`classify` needs to know of the server's settings."""

    #: A head still without its end after this many bytes is handed over: the worker reads
    #: on, or refuses it (414, 431) with Gunicorn's status.
    max_head: int = 64 * 1024
    #: A body of at most this many bytes waits in the master until it has all arrived;
    #: 0 hands a connection over as soon as its head is complete.
    body_buffer: int = 0
    #: Gunicorn's ``proxy_protocol``: "off", "v1", "v2" or "auto".
    proxy_protocol: str = "off"
    #: The listeners speak TLS: ready once the first TLS record (the ClientHello) is there.
    tls: bool = False


EMPTY: Final = Verdict(Kind.EMPTY)
PARTIAL: Final = Verdict(Kind.PARTIAL)
READY: Final = Verdict(Kind.READY)
_CHUNKED_PENDING: Final = Verdict(Kind.BODY, 0)
_TLS: Final = Verdict(Kind.TLS, 400, "TLS handshake on a plain-HTTP port")

_TLS_HANDSHAKE: Final = 0x16
#: A method: RFC 9110 token characters (what h11 and Gunicorn accept), then one space.
_METHOD_RE: Final = re.compile(TOKEN)
#: The three fields that decide whether a body follows the head, with their values.
_BODY_FIELD_RE: Final = re.compile(
    rb"\r\n(content-length|transfer-encoding|expect)[ \t]*:[ \t]*([^\r\n]*?)[ \t]*(?=\r\n)",
    re.IGNORECASE,
)
_HEX_RE: Final = re.compile(rb"[0-9A-Fa-f]{1,16}")
#: A chunk-size line (with extensions) or trailer section longer than this is not waited
#: for: the worker reads on and refuses what Gunicorn refuses.
_MAX_CHUNK_LINE: Final = 4096
_MAX_TRAILERS: Final = 64 * 1024
# Enough to hold any PROXY v1 line or this project's resume marker.
_PROXY_V1_SPAN: Final = 256
_PROXY_V2_SPAN: Final = 16 + 0xFFFF


def classify(data: bytes | bytearray, length: int, rules: ArrivalRules,
             peer_allowed: bool = True) -> Verdict:
    """What the first ``length`` bytes of ``data`` (what a connection sent so far) mean.

    ``peer_allowed``: the peer is in ``proxy_allow_ips`` (only read when a PROXY header
    comes). Never raises for anything a client can send.
    """
    if length <= 0:
        return EMPTY
    if rules.tls:
        return READY if _tls_record_complete(data, length) else PARTIAL
    start = 0
    if rules.proxy_protocol != "off" and data[0] in b"\rP":
        got = _proxy_header(data, length, rules.proxy_protocol, peer_allowed)
        if isinstance(got, Verdict):
            return got
        start = got
        if start == length:
            return PARTIAL  # the header came; the request has not begun
    first = data[start]
    if first == _TLS_HANDSHAKE:
        return _TLS
    return _request(data, start, length, rules)


def _request(data: bytes | bytearray, start: int, length: int, rules: ArrivalRules) -> Verdict:
    """The request that begins at ``start``."""
    line = start
    if data[start] == 0x0D:  # RFC 9112 2.2: one empty line before a request is ignored
        if length - start < 2:
            return PARTIAL
        if data[start + 1] != 0x0A:
            return Verdict(Kind.REFUSE, 400, "bare CR before the request line")
        line = start + 2
        if line == length:
            return PARTIAL
    method = _METHOD_RE.match(data, line, length)
    if method is None:
        return Verdict(Kind.REFUSE, 400, "invalid request line: cannot begin a method")
    if method.end() < length and data[method.end()] != 0x20:
        return Verdict(Kind.REFUSE, 400, "invalid request line: no space after the method")
    found = END_OF_HEAD.search(data, start, length)
    if found is None:
        return READY if length > rules.max_head else PARTIAL
    if not rules.body_buffer:
        return READY
    return _body(data, line, found.end(), length, rules.body_buffer)


def _body(data: bytes | bytearray, line: int, head_end: int, length: int,
          bound: int) -> Verdict:
    """The head ends at ``head_end``: is its body (if any) there too?"""
    content_length = -1
    chunked = False
    # From the end of the request line, so that every field line starts with CRLF.
    first_crlf = data.find(b"\r\n", line, head_end)
    if first_crlf < 0:
        return READY  # bare LF line endings: the worker refuses them
    for found in _BODY_FIELD_RE.finditer(data, first_crlf, head_end):
        name = found.group(1).lower()
        value = found.group(2)
        if name == b"expect":
            return READY  # 100-continue: the application decides whether it wants the body
        if name == b"content-length":
            if content_length >= 0 or chunked or not value.isdigit() or len(value) > 18:
                return READY  # refused (or read) by the worker, as Gunicorn does
            content_length = int(value)
        else:
            if chunked or content_length >= 0 or value.lower() != b"chunked":
                return READY
            chunked = True
    if chunked:
        end = chunked_end(data, head_end, length, bound)
        if end == -1:
            return _CHUNKED_PENDING
        return READY  # the whole body is there, or the worker must decide (end < -1)
    if content_length <= 0 or content_length > bound:
        return READY  # no body, or one too large to wait for here: as before
    need = head_end + content_length
    return READY if length >= need else Verdict(Kind.BODY, need)


def chunked_end(data: bytes | bytearray, pos: int, length: int, bound: int) -> int:
    """Where a chunked body that starts at ``pos`` ends (just past its last CRLF), within the
    first ``length`` bytes of ``data``; -1 if more is needed; -2 if the worker should read it
    (malformed, or more than ``bound`` bytes of chunk data, or lines longer than allowed)."""
    total = 0
    while True:
        line_end = data.find(b"\n", pos, min(length, pos + _MAX_CHUNK_LINE)) - 1
        if line_end < 0:
            return -1 if length - pos < _MAX_CHUNK_LINE else -2
        if line_end < pos or data[line_end] != 0x0D:
            return -2  # a bare LF: the worker refuses it
        size = _HEX_RE.match(data, pos, line_end)
        if size is None:
            return -2
        tail = size.end()
        if tail != line_end and data[tail] not in b"; \t":
            return -2
        chunk = int(size.group(), 16)
        total += chunk
        if total > bound:
            return -2
        if chunk == 0:
            return _trailers_end(data, line_end, length)
        pos = line_end + 2 + chunk + 2
        if pos > length:
            return -1
        if data[pos - 2:pos] != b"\r\n":
            return -2


def _trailers_end(data: bytes | bytearray, last_chunk_end: int, length: int) -> int:
    """The end of the trailer section after the last chunk line (which ends at the CRLF at
    ``last_chunk_end``)."""
    after = last_chunk_end + 2
    if length - after < 2:
        return -1
    if data[after:after + 2] == b"\r\n":
        return after + 2
    end = data.find(b"\r\n\r\n", last_chunk_end, length)
    if end < 0:
        return -1 if length - after < _MAX_TRAILERS else -2
    return end + 4


def _proxy_header(data: bytes | bytearray, length: int, mode: str,
                  peer_allowed: bool) -> int | Verdict:
    """Length of the PROXY header (or resume marker) at the start, 0 if none, else a verdict:
    more needed, or refused as Gunicorn refuses it (400 malformed, 403 not allowed)."""
    span = _PROXY_V1_SPAN if data[0] == 0x50 else _PROXY_V2_SPAN
    try:
        got = proxy_protocol.parse(bytes(data[:min(length, span)]), mode, peer_allowed)
    except Rejected as exc:
        return Verdict(Kind.REFUSE, exc.status_hint, exc.reason)
    if got is proxy_protocol.NOT_PROXY:
        return 0
    if isinstance(got, proxy_protocol.ProxyInfo):
        return got.consumed
    if length >= span:  # cannot happen for a header within its own size limits
        return Verdict(Kind.REFUSE, 400, "PROXY header too long")
    return PARTIAL


def _tls_record_complete(data: bytes | bytearray, length: int) -> bool:
    """On a TLS listener: True once the first TLS record (the ClientHello) has arrived.

    Anything that is not a TLS handshake record is handed over at once: the worker's TLS
    layer refuses it with a proper alert.
    """
    if data[0] != _TLS_HANDSHAKE:
        return True
    return length >= 5 and length >= 5 + int.from_bytes(data[3:5], "big")
