"""Reading one request head: h11 parses the client's bytes, Gunicorn's rules run around it.
Sans-IO.

:func:`receive_head` takes a complete head (delimited by
:func:`~gunicorn_fdpass.http.request_rules.find_head_end`, which already refused an oversized
request line or header section and any bare LF) and:

1. **Before h11, on the raw bytes**, checks what h11 accepts or silently normalises away:
   control characters and bare CR in the header section, obs-fold (h11 joins folded lines;
   Gunicorn refuses them unless ``permit_obsolete_folding``), the length of each field line
   (431). It also reads the two framing fields, ``Content-Length`` and
   ``Transfer-Encoding``, as the client sent them and decides the framing with Gunicorn's
   rules and statuses: h11 would merge a repeated or listed Content-Length (``5, 5``) into
   one, lower-case a transfer coding, and answer 501 where Gunicorn answers 400.
2. **h11** gets the client's bytes (one leading empty line dropped, which RFC 9112 2.2 lets a
   server ignore and h11 refuses) and parses the request line and header fields into a
   ``Request`` event. What h11 refuses is answered with its ``error_status_hint``. It then
   frames the body exactly as decided in step 1 (it only accepts a single ``chunked`` or a
   plain Content-Length, and those mean the same to both).
3. **After h11, on its Request event**: Gunicorn's method, target and version rules, and the
   field rules and header policy of :mod:`~gunicorn_fdpass.http.fields`.

The one exception to "h11 gets the client's bytes": with Gunicorn's ``strip_header_spaces``
(a compatibility flag Gunicorn documents as dangerous), the whitespace between a field name
and its colon is removed first, since h11 refuses it and Gunicorn strips it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import urlsplit

import h11

from .body_framing import RequestBody
from .fields import apply_fields
from .request_rules import TOKEN, ParsedRequest, Rejected, RequestRules

__all__ = ["new_parser", "parse_head", "receive_head"]

# Gunicorn's "conventional method" rule: no lower case and no '#', 3 to 20 characters.
_METHOD_BADCHAR_RE: Final = re.compile(rb"[a-z#]")
# In a header section: control characters other than HTAB, CR and LF (RFC 9110 5.5); h11
# lets some through. A single character class: one fast C-level scan.
_CONTROL_RE: Final = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# A framing field, with its folded continuation lines (only present when folding is
# permitted). Matched in the raw head, from the CRLF that ends the previous line.
_FRAMING_FIELD_RE: Final = re.compile(
    rb"\r\n(content-length|transfer-encoding)[ \t]*:([^\r]*(?:\r\n[ \t][^\r]*)*)",
    re.IGNORECASE,
)
# A header section every raw check passes (one C-level pass instead of five): lines that
# start with a visible character (no obs-fold), hold only visible characters, SP, HTAB and
# obs-text (no control character, no bare CR or LF), each ending with CRLF.
_CLEAN_BLOCK_RE: Final = re.compile(rb"(?:[!-~\x80-\xff][\t\x20-\x7e\x80-\xff]*\r\n)*")
# The request line's common methods and versions: conventional, already upper case, so
# Gunicorn's method rule and casefolding leave them as they are.
_METHODS: Final = {m.encode(): m for m in (
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE")}
_VERSIONS: Final = {b"1.1": (1, 1), b"1.0": (1, 0)}
_SPACE_BEFORE_COLON_RE: Final = re.compile(rb"(\r\n" + TOKEN + rb")[ \t]+:")
_KNOWN_CODINGS: Final = ("identity", "compress", "deflate", "gzip")


def new_parser(rules: RequestRules) -> h11.Connection:
    """A server-side h11 connection for one request."""
    # h11 only ever buffers an incomplete chunk-size line or trailer section (a head is
    # complete when it gets it): bound them like Gunicorn bounds a header section.
    return h11.Connection(h11.SERVER, max_incomplete_event_size=rules.max_header_block)


def receive_head(
    head: bytes, rules: RequestRules, *, trusted: bool
) -> tuple[ParsedRequest, RequestBody]:
    """Parse a complete request head; return it and the reader of its body (through the same
    h11 connection). ``trusted``: the peer is in ``forwarded_allow_ips``, so it may set
    ``secure_scheme_headers`` and ``forwarder_headers``. Raises :class:`Rejected`."""
    request, conn = _parse(head, rules, trusted, None)
    return request, RequestBody(conn, request, rules)


def parse_head(
    head: bytes, rules: RequestRules, *, trusted: bool, conn: h11.Connection | None = None
) -> ParsedRequest:
    """Parse a complete request head with h11 and Gunicorn's rules (see the module).

    ``conn`` is the h11 connection to feed; it is left holding the request's state, ready
    for its body. Without one, h11 parses the head alone (see :func:`_h11_event`).
    Raises :class:`Rejected`.
    """
    return _parse(head, rules, trusted, conn)[0]


def _parse(
    head: bytes, rules: RequestRules, trusted: bool, conn: h11.Connection | None
) -> tuple[ParsedRequest, h11.Connection | None]:
    """:func:`parse_head`, and the h11 connection that holds the request (None when it has
    no body and none was given: then no connection was needed)."""
    start = 2 if head[:2] == b"\r\n" else 0
    line_end = head.find(b"\r\n", start)
    if line_end < 0:
        raise Rejected(400, "incomplete request head")
    _check_raw_block(head[line_end + 2 : -2], rules)
    length, chunked, coded, te_value = _framing(head, line_end)
    data = head[start:]
    if rules.strip_header_spaces:
        data = _SPACE_BEFORE_COLON_RE.sub(rb"\1:", data)
    if conn is None and (chunked or length or _H11_HEAD_READER is None):
        conn = new_parser(rules)  # h11 frames the body, from the state the head left
    event = _h11_event(data, conn)
    request = _request_line(event.method, event.target, event.http_version, rules)
    apply_fields(event.headers.raw_items(), request, rules, trusted=trusted)
    if chunked:
        if request.version < (1, 1):
            raise Rejected(400, "chunked on HTTP/1.0")
        request.chunked = True
        # h11 lower-cased the value; the application sees it as sent, as under Gunicorn.
        request.headers = [
            (name, te_value if name == "TRANSFER-ENCODING" else value)
            for name, value in request.headers
        ]
    request.content_length = length
    request.must_close = request.must_close or coded
    return request, conn


def _h11_event(data: bytes, conn: h11.Connection | None) -> h11.Request:
    """h11's ``Request`` event for one complete head. Raises :class:`Rejected`.

    With ``conn``, through its ``next_event``. Without one (a request without a body, the
    usual case), through the function h11's connection calls for a head (its reader for an
    idle client), given the head in h11's receive buffer: the same parse and the same
    errors, without building a connection and running its state machine, which for the
    one request of a new connection only prepares the body reader (here none: the body is
    empty, :class:`RequestBody` needs no h11 for it) and the response side (never used:
    responses are serialized here). That is half of h11's cost of a small head. h11 keeps
    these two in private modules: if a version of h11 has them no more (see
    :data:`_H11_HEAD_READER`), every head goes through a connection.
    """
    event: object
    try:
        if conn is not None:
            conn.receive_data(data)
            event = conn.next_event()
        else:
            reader = _H11_HEAD_READER
            assert reader is not None  # else _parse made a connection
            read, buffer_type = reader
            buffer = buffer_type()
            buffer += data
            event = read(buffer)
    except h11.ProtocolError as exc:
        # The reader raises h11's LocalProtocolError, which next_event turns into a
        # RemoteProtocolError with the same message and status.
        raise Rejected(exc.error_status_hint, f"refused by h11: {exc}") from None
    if type(event) is not h11.Request:  # cannot happen: h11 was given one complete head
        raise Rejected(400, f"h11 did not take the request head ({event!r})")
    return event


def _head_reader() -> tuple[Callable[[Any], object], Callable[[], Any]] | None:
    """h11's reader of a head and its receive buffer, if this h11 has them and they read a
    head as its connection does; else None."""
    try:
        from h11._readers import maybe_read_from_IDLE_client
        from h11._receivebuffer import ReceiveBuffer
    except ImportError:  # pragma: no cover - another h11 layout
        return None
    sample = b"GET /a?b HTTP/1.1\r\nHost: h\r\nX-A:  1 \r\n\r\n"
    try:
        buffer = ReceiveBuffer()
        buffer += sample
        event = maybe_read_from_IDLE_client(buffer)
        conn = h11.Connection(h11.SERVER)
        conn.receive_data(sample)
        expected = conn.next_event()
    except Exception:  # pragma: no cover - the private parts changed
        return None
    if type(event) is not h11.Request or event != expected or len(buffer):
        return None  # pragma: no cover - the private parts changed
    return maybe_read_from_IDLE_client, ReceiveBuffer


#: h11's head reader and buffer (None: every head goes through an h11 connection). Not
#: ``Final``, so that it is looked up at each use, compiled or not (a test replaces it).
_H11_HEAD_READER = _head_reader()


def _check_raw_block(block: bytes, rules: RequestRules) -> None:
    """Checks on the header section's raw bytes (each line with its CRLF, no blank line)."""
    if _CLEAN_BLOCK_RE.fullmatch(block):
        if len(block) > rules.field_size and (
            max(map(len, block.split(b"\r\n"))) + 2 > rules.field_size
        ):
            raise Rejected(431, "header field too large")
        return
    _check_raw_block_closely(block, rules)


def _check_raw_block_closely(block: bytes, rules: RequestRules) -> None:
    """The checks of :func:`_check_raw_block` one by one, each with its own answer (a block
    that is not plainly clean, or folded lines that Gunicorn's settings permit)."""
    if _CONTROL_RE.search(block):
        raise Rejected(400, "invalid character in the header section")
    crlf = block.count(b"\r\n")
    if block.count(b"\r") != crlf or block.count(b"\n") != crlf:  # RFC 9112 2.2
        raise Rejected(400, "bare CR or LF in the header section")
    folded = block[:1] in (b" ", b"\t") or b"\r\n " in block or b"\r\n\t" in block
    if folded:
        if block[:1] in (b" ", b"\t"):
            raise Rejected(400, "invalid header line")  # folded onto the request line
        if not rules.permit_obsolete_folding:
            raise Rejected(400, "obsolete line folding")
    size = rules.field_size
    if len(block) <= size:
        return  # no line can be too long
    lines = block.split(b"\r\n")
    if not folded:
        if max(map(len, lines)) + 2 > size:
            raise Rejected(431, "header field too large")
        return
    length = 0  # a folded field counts with its continuation lines, as in Gunicorn
    for line in lines:
        length = length + len(line) + 2 if line[:1] in (b" ", b"\t") else len(line) + 2
        if length > size:
            raise Rejected(431, "header field too large")


def _framing(head: bytes, line_end: int) -> tuple[int | None, bool, bool, str]:
    """The framing fields as sent, decided with Gunicorn's rules (RFC 9112 6), refusing every
    ambiguous case: (Content-Length or None, chunked, a coding before chunked, TE value)."""
    content_length: bytes | None = None
    te_value = ""
    chunked = coded = transfer_encoding = False
    # Most heads have neither field: two substring searches of the lower-cased head cost
    # less than the case-insensitive expression would.
    lowered = head.lower()
    if b"\r\ncontent-length" not in lowered and b"\r\ntransfer-encoding" not in lowered:
        return None, False, False, ""
    for match in _FRAMING_FIELD_RE.finditer(head, line_end):
        value = match.group(2)
        if b"\r\n" in value:  # folded (permit_obsolete_folding): joined as Gunicorn does
            value = b" ".join(part.strip(b" \t") for part in value.split(b"\r\n"))
        else:
            value = value.strip(b" \t")
        if len(match.group(1)) == 14:  # content-length
            if content_length is not None:
                raise Rejected(400, "repeated Content-Length")
            content_length = value
            continue
        transfer_encoding = True
        te_value = value.decode("latin-1")
        for coding in te_value.split(","):
            coding = coding.strip(" \t").lower()
            if coding == "chunked":
                if chunked:
                    raise Rejected(400, "chunked applied twice")
                chunked = True
            elif coding in _KNOWN_CODINGS:
                if chunked:
                    raise Rejected(400, "chunked is not the last transfer coding")
                # The application gets the still-encoded body; what follows it on the
                # connection is not worth trusting.
                coded = coded or coding != "identity"
            else:
                raise Rejected(501, "unsupported transfer coding")
    if transfer_encoding and not chunked:
        raise Rejected(400, "transfer coding does not end with chunked")  # RFC 9112 6.3
    if chunked:
        if content_length is not None:
            raise Rejected(400, "both Content-Length and Transfer-Encoding")
        return None, True, coded, te_value
    if content_length is None:
        return None, False, coded, te_value
    if not (content_length.isascii() and content_length.isdigit()):
        raise Rejected(400, "invalid Content-Length")
    return int(content_length), False, coded, te_value


def _request_line(
    method: bytes, target: bytes, version: bytes, rules: RequestRules
) -> ParsedRequest:
    """Gunicorn's rules for the request line h11 parsed (method and target are tokens and
    visible ASCII, the version ``N.N``: h11 checked that much)."""
    name = _METHODS.get(method)
    if name is None:
        if not rules.permit_unconventional_http_method and (
            _METHOD_BADCHAR_RE.search(method) or not 3 <= len(method) <= 20
        ):
            raise Rejected(400, "invalid method")
        if rules.casefold_http_method:
            method = method.upper()
        name = method.decode("latin-1")
    # The target is already printable ASCII: h11's request-target rule is VCHAR+ (RFC 9112
    # 3.2 / RFC 3986 2), the same as Gunicorn's, so it is not scanned a second time here.
    if target == b"*":
        if method != b"OPTIONS":  # RFC 9112 3.2.4
            raise Rejected(400, "asterisk-form is only for OPTIONS")
        path, query, fragment = b"*", b"", b""
    elif target[:1] == b"/":
        rest, _, fragment = target.partition(b"#")
        path, _, query = rest.partition(b"?")
    elif b"://" in target:
        try:
            split = urlsplit(target)
        except ValueError:
            raise Rejected(400, "invalid request target") from None
        path, query, fragment = split.path, split.query, split.fragment
        if not path:
            path = b"/"
    elif method == b"CONNECT":  # RFC 9112 3.2.3 authority-form
        path, query, fragment = b"", b"", b""
    else:
        raise Rejected(400, "authority-form is only for CONNECT")
    ver = _VERSIONS.get(version)
    if ver is None:
        ver = (version[0] - 48, version[2] - 48)
        if not (1, 0) <= ver < (2, 0) and not rules.permit_unconventional_http_version:
            raise Rejected(400, "unsupported HTTP version")
    text = target.decode("latin-1")
    return ParsedRequest(
        method=name,
        target=text,
        # partition() hands back the target itself when it has no query or fragment.
        path=text if path is target else path.decode("latin-1"),
        query=query.decode("latin-1"),
        fragment=fragment.decode("latin-1"),
        version=ver,
        headers=[],
        must_close=method == b"CONNECT",  # after CONNECT, the bytes are tunnel data
    )
