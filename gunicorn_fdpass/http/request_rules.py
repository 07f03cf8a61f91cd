"""Request head rules: where a request head ends and what it means, or why it is refused. Pure.

Sans-IO, in the spirit of h11: functions take bytes and return a parsed request, or raise
:class:`Rejected` carrying the status to answer with. The rules are Gunicorn 27's (same
limits, same status codes, same compatibility flags), so a request this worker refuses is one
Gunicorn refuses; the few deliberate differences are listed in ``docs/http-conformance.md``.

Speed matters: this runs once per request in a pure-Python worker. The common case (a clean
head) is validated by one precompiled regex over the whole header block and split by another;
only a head that fails that check goes through the slow line-by-line path, whose job is to
find the precise reason and status (or to apply a compatibility flag).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

__all__ = [
    "AddressAllowList",
    "ParsedRequest",
    "Rejected",
    "RequestRules",
    "check_fields",
    "find_head_end",
    "parse_head",
]

#: Gunicorn's hard ceilings (``gunicorn.http.message``).
MAX_REQUEST_LINE: Final = 8190
MAX_HEADERS: Final = 32768
DEFAULT_FIELD_SIZE: Final = 8190

# RFC 9110 5.6.2 token.
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_TOKEN_RE: Final = re.compile(_TOKEN)
# Gunicorn's "conventional method" rule: no lower case and no '#', 3 to 20 characters.
_METHOD_BADCHAR_RE: Final = re.compile(rb"[a-z#]")
# The end of a head, or a bare LF (RFC 9112 2.2: every line of a head ends with CRLF).
_END_OR_BARE_LF_RE: Final = re.compile(rb"\r\n\r\n|(?<!\r)\n")
#: Used for a request line when limit_request_line is 0 ("unlimited"): memory is not.
UNLIMITED_LINE: Final = 1024 * 1024
_VERSION_RE: Final = re.compile(rb"HTTP/([0-9])\.([0-9])")
# RFC 9112 3.2 / RFC 3986 2: a request-target is printable ASCII; anything else is refused.
_TARGET_INVALID_RE: Final = re.compile(rb"[^\x21-\x7e]")
# RFC 9110 5.5: in a field value only SP, HTAB, VCHAR and obs-text.
_VALUE_INVALID_RE: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# The fast path: a header block made only of "token:value CRLF" lines with clean values and
# no obs-fold (a line starting with SP/HTAB never matches the token). One C-level pass.
_CLEAN_BLOCK_RE: Final = re.compile(rb"(?:" + _TOKEN + rb":[\t\x20-\x7e\x80-\xff]*\r\n)*")
_FIELD_RE: Final = re.compile(rb"(" + _TOKEN + rb"):[ \t]*([^\r]*?)[ \t]*\r\n")

# RFC 9112 3.2 / RFC 3986 3.2.2: Host = uri-host [ ":" port ] (an empty value is allowed).
_HOST_RE: Final = re.compile(
    r"(?:\[[0-9A-Za-z:.\-_~!$&'()*+,;=]*\]|[0-9A-Za-z\-._~%!$&'()*+,;=]*)(?::[0-9]*)?"
)

#: RFC 9110 6.5.1: fields a trailer section must not carry (upper case, as parsed).
FORBIDDEN_TRAILERS: Final = frozenset(
    {"HOST", "CONTENT-LENGTH", "TRANSFER-ENCODING", "TRAILER", "AUTHORIZATION", "TE"}
)
# RFC 9110 5.3: fields that admit a single member; a repeat makes the message ambiguous.
_SINGLETONS: Final = frozenset({"HOST", "CONTENT-TYPE"})

DEFAULT_SECURE_SCHEME_HEADERS: Final = {
    "X-FORWARDED-PROTOCOL": "ssl",
    "X-FORWARDED-PROTO": "https",
    "X-FORWARDED-SSL": "on",
}


class Rejected(Exception):
    """The request is refused; ``status_hint`` is the status to answer with."""

    def __init__(self, status_hint: int, reason: str) -> None:
        super().__init__(reason)
        self.status_hint = status_hint
        self.reason = reason


#: How many peer addresses an :class:`AddressAllowList` remembers its decision for.
_MAX_REMEMBERED_PEERS: Final = 1024


class AddressAllowList:
    """A parsed ``forwarded_allow_ips`` / ``proxy_allow_ips`` list (``*`` allows everyone)."""

    def __init__(self, entries: Iterable[str]) -> None:
        entries = [e.strip() for e in entries if e.strip()]
        self.allow_all = "*" in entries
        self.networks = tuple(ipaddress.ip_network(e) for e in entries if e != "*")
        # Decisions by host: parsing an address costs more than the rest of a small
        # request's validation, and a worker sees the same few peers (often one proxy) again
        # and again. Bounded, since the peers of a public server are not.
        self._decisions: dict[str, bool] = {}

    def allows(self, peer: object) -> bool:
        """True if ``peer`` (a socket address) is allowed; a non-IP peer (a UNIX socket) is,
        as in Gunicorn: only a local process can connect to it."""
        if self.allow_all or not isinstance(peer, tuple):
            return True
        if not peer:
            return False
        host = peer[0]
        if not isinstance(host, str):
            return self._decide(host)
        decision = self._decisions.get(host)
        if decision is None:
            decision = self._decide(host)
            if len(self._decisions) >= _MAX_REMEMBERED_PEERS:
                self._decisions.clear()
            self._decisions[host] = decision
        return decision

    def _decide(self, host: Any) -> bool:
        try:
            ip = ipaddress.ip_address(host)
        except (ValueError, TypeError):
            return False
        return any(ip in net for net in self.networks)


@dataclass(frozen=True)
class RequestRules:
    """Gunicorn's request settings, as this parser applies them."""

    limit_request_line: int = 4094  # 0: unlimited (as in Gunicorn; capped at 8190 otherwise)
    limit_request_fields: int = 100  # <= 0 or > 32768: 32768
    limit_request_field_size: int = 8190  # <= 0: 8190
    permit_unconventional_http_method: bool = False
    permit_unconventional_http_version: bool = False
    casefold_http_method: bool = False
    permit_obsolete_folding: bool = False
    strip_header_spaces: bool = False
    header_map: str = "drop"  # "drop", "refuse" or "dangerous"
    secure_scheme_headers: Mapping[str, str] = field(
        default_factory=lambda: dict(DEFAULT_SECURE_SCHEME_HEADERS)
    )
    forwarder_headers: frozenset[str] = frozenset({"SCRIPT_NAME", "PATH_INFO"})
    forwarded_allow: AddressAllowList = field(
        default_factory=lambda: AddressAllowList(["127.0.0.1", "::1"])
    )

    @property
    def line_limit(self) -> int:
        """Effective request-line limit (0: none)."""
        limit = self.limit_request_line
        if limit < 0 or limit >= MAX_REQUEST_LINE:
            return MAX_REQUEST_LINE
        return limit

    @property
    def fields_limit(self) -> int:
        limit = self.limit_request_fields
        return MAX_HEADERS if limit <= 0 or limit > MAX_HEADERS else limit

    @property
    def field_size(self) -> int:
        return self.limit_request_field_size if self.limit_request_field_size > 0 else (
            DEFAULT_FIELD_SIZE
        )

    @property
    def max_header_block(self) -> int:
        """Bound on the header section (after the request line), as Gunicorn computes it."""
        return self.fields_limit * (self.field_size + 2) + 4

    @property
    def max_head(self) -> int:
        """The longest request head these rules can accept: request line, CRLF, header section.

        The master peeks at most this much before handing a head over, so that the worker,
        not the master, refuses one that is too long."""
        return (self.line_limit or UNLIMITED_LINE) + 2 + self.max_header_block


@dataclass
class ParsedRequest:
    """A request head that passed every rule."""

    method: str
    target: str  # the request-target as sent (RAW_URI)
    path: str  # still percent-encoded
    query: str
    fragment: str
    version: tuple[int, int]
    headers: list[tuple[str, str]]  # kept fields, names upper case (Gunicorn's req.headers)
    content_length: int | None = None  # None: no Content-Length (or chunked)
    chunked: bool = False
    must_close: bool = False  # the connection cannot be reused after this request
    expect_continue: bool = False
    scheme: str | None = None  # set by a trusted secure_scheme_headers field
    script_name: str | None = None  # set by a trusted SCRIPT_NAME field (forwarder_headers)


def find_head_end(data: bytes | bytearray, rules: RequestRules, resume: int = 0) -> int:
    """Where the request head in ``data`` ends (index just past its blank line), or -1 if
    more data is needed. Raises :class:`Rejected` as soon as the head is known to break a
    size limit (414, 431) or to use a bare LF line ending (400).

    ``resume`` is how many bytes of ``data`` an earlier call already scanned, so that a head
    arriving a few bytes at a time is not rescanned from the start on every read.
    """
    start = 2 if data[:2] == b"\r\n" else 0  # RFC 9112 2.2: one leading empty line is ignored
    limit = rules.line_limit or UNLIMITED_LINE
    match = _END_OR_BARE_LF_RE.search(data, max(start, resume - 3))
    if match is not None:
        if match.end() - match.start() == 1:
            raise Rejected(400, "bare LF as a line terminator")
        if data.find(b"\r\n", start) - start > limit:
            raise Rejected(414, "request line too long")
        return match.end()
    line_end = data.find(b"\r\n", start, start + limit + 3)
    if line_end < 0:
        if len(data) - start - 2 > limit:
            raise Rejected(414, "request line too long")
        return -1
    if line_end - start > limit:
        raise Rejected(414, "request line too long")
    if line_end == start:
        raise Rejected(400, "empty request line")  # only one leading empty line is ignored
    if len(data) - line_end - 2 > rules.max_header_block:
        raise Rejected(431, "header section too large")
    return -1


def parse_head(head: bytes, rules: RequestRules, *, trusted: bool) -> ParsedRequest:
    """Parse a complete request head (as delimited by :func:`find_head_end`).

    ``trusted``: the peer is in ``forwarded_allow_ips``, so it may set
    ``secure_scheme_headers`` and ``forwarder_headers``. Raises :class:`Rejected`.
    """
    start = 2 if head[:2] == b"\r\n" else 0
    line_end = head.find(b"\r\n", start)
    request = _parse_request_line(head[start:line_end], rules)
    block = head[line_end + 2 : -2]  # each field line with its CRLF
    if block.count(b"\n") != block.count(b"\r\n"):
        raise Rejected(400, "bare LF in the header section")
    check_fields(block, request, rules, trusted=trusted)
    _set_framing(request)
    return request


def _parse_request_line(line: bytes, rules: RequestRules) -> ParsedRequest:
    parts = line.split(b" ", 2)
    if len(parts) != 3:
        raise Rejected(400, "invalid request line")
    method, target, version = parts
    if not rules.permit_unconventional_http_method and (
        _METHOD_BADCHAR_RE.search(method) or not 3 <= len(method) <= 20
    ):
        raise Rejected(400, "invalid method")
    if not _TOKEN_RE.fullmatch(method):
        raise Rejected(400, "invalid method")
    if rules.casefold_http_method:
        method = method.upper()
    if not target or _TARGET_INVALID_RE.search(target):
        raise Rejected(400, "invalid request target")
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
    match = _VERSION_RE.fullmatch(version)
    if match is None:
        raise Rejected(400, "invalid HTTP version")
    ver = (int(match.group(1)), int(match.group(2)))
    if not (1, 0) <= ver < (2, 0) and not rules.permit_unconventional_http_version:
        raise Rejected(400, "unsupported HTTP version")
    return ParsedRequest(
        method=method.decode("latin-1"),
        target=target.decode("latin-1"),
        path=path.decode("latin-1"),
        query=query.decode("latin-1"),
        fragment=fragment.decode("latin-1"),
        version=ver,
        headers=[],
        must_close=method == b"CONNECT",  # after CONNECT, the bytes are tunnel data
    )


def _split_fields(block: bytes, rules: RequestRules) -> list[tuple[bytes, bytes]]:
    """Split a header block into (name, value) pairs; the slow path finds the exact fault."""
    if _CLEAN_BLOCK_RE.fullmatch(block):
        # No line can be too long if the whole block is short; else measure every line.
        if len(block) > rules.field_size and (
            max(map(len, block.split(b"\r\n"))) + 2 > rules.field_size
        ):
            raise Rejected(431, "header field too large")
        pairs: list[tuple[bytes, bytes]] = _FIELD_RE.findall(block)
        return pairs
    return _split_fields_slowly(block, rules)


def _split_fields_slowly(block: bytes, rules: RequestRules) -> list[tuple[bytes, bytes]]:
    lines = block.split(b"\r\n")[:-1]
    size = rules.field_size
    pairs: list[tuple[bytes, bytes]] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        length = len(line) + 2
        colon = line.find(b":")
        if colon <= 0:
            raise Rejected(400, "invalid header line")
        name, value = line[:colon], line[colon + 1 :]
        if rules.strip_header_spaces:
            name = name.rstrip(b" \t")
        if not _TOKEN_RE.fullmatch(name):
            raise Rejected(400, "invalid header name")
        values = [value.strip(b" \t")]
        while i < len(lines) and lines[i][:1] in (b" ", b"\t"):
            if not rules.permit_obsolete_folding:
                raise Rejected(400, "obsolete line folding")
            length += len(lines[i]) + 2
            if length > size:
                raise Rejected(431, "header field too large")
            values.append(lines[i].strip(b" \t"))
            i += 1
        joined = b" ".join(values)
        if _VALUE_INVALID_RE.search(joined):
            raise Rejected(400, "invalid character in a header value")
        if length > size:
            raise Rejected(431, "header field too large")
        pairs.append((name, joined))
    return pairs


def check_fields(
    block: bytes,
    request: ParsedRequest,
    rules: RequestRules,
    *,
    trusted: bool,
    trailer: bool = False,
) -> list[tuple[str, str]]:
    """Validate a field block (a header or trailer section, each line with its CRLF, no final
    blank line) and apply Gunicorn's header policy. Header fields are stored on ``request``;
    trailer fields are returned. Raises :class:`Rejected`."""
    pairs = _split_fields(block, rules)
    if trusted and not trailer:
        scheme_headers: Mapping[str, str] = rules.secure_scheme_headers
        forwarders = rules.forwarder_headers
    else:
        scheme_headers, forwarders = {}, frozenset()
    limit = rules.fields_limit
    kept: list[tuple[str, str]] = []
    seen: set[str] = set()
    scheme: str | None = None
    for raw_name, raw_value in pairs:
        if len(kept) >= limit:
            raise Rejected(431, "too many header fields")
        name = raw_name.decode("latin-1").upper()
        value = raw_value.decode("latin-1")
        if trailer and name in FORBIDDEN_TRAILERS:
            raise Rejected(400, f"{name} is not allowed in a trailer section")
        if name in _SINGLETONS:
            if name in seen:
                raise Rejected(400, f"repeated {name}")
            seen.add(name)
            if name == "HOST" and not _HOST_RE.fullmatch(value):
                raise Rejected(400, "invalid Host")  # RFC 9112 3.2
        elif name == "EXPECT" and not trailer:
            if value.lower() != "100-continue":
                raise Rejected(417, "unsupported expectation")
            # RFC 9110 10.1.1: an HTTP/1.0 client's 100-continue is ignored.
            request.expect_continue = request.version >= (1, 1)
        if name in scheme_headers:
            this = "https" if value == scheme_headers[name] else "http"
            if scheme is not None and this != scheme:
                raise Rejected(400, "contradictory scheme headers")
            scheme = this
        if "_" in name and name not in forwarders and "*" not in forwarders:
            # "A_B" and "A-B" map to the same environ key: never let one pass as the other.
            if rules.header_map == "drop":
                continue
            if rules.header_map != "dangerous":
                raise Rejected(400, f"header name with underscore: {name}")
        if name == "SCRIPT_NAME" and not trailer:
            request.script_name = value
        kept.append((name, value))
    if trailer:
        return kept
    if "HOST" not in seen and request.version >= (1, 1):
        # RFC 9112 3.2: a server MUST answer 400 to an HTTP/1.1 request without Host.
        raise Rejected(400, "HTTP/1.1 request without Host")
    if scheme is not None:
        request.scheme = scheme
    request.headers = kept
    return kept


def _set_framing(request: ParsedRequest) -> None:
    """Decide how the body is delimited (RFC 9112 6), refusing every ambiguous case."""
    content_length: str | None = None
    chunked = False
    transfer_encoding = False
    for name, value in request.headers:
        if name == "CONTENT-LENGTH":
            if content_length is not None:
                raise Rejected(400, "repeated Content-Length")
            content_length = value
        elif name == "TRANSFER-ENCODING":
            transfer_encoding = True
            for coding in value.split(","):
                coding = coding.strip(" \t").lower()
                if coding == "chunked":
                    if chunked:
                        raise Rejected(400, "chunked applied twice")
                    chunked = True
                elif coding in ("identity", "compress", "deflate", "gzip"):
                    if chunked:
                        raise Rejected(400, "chunked is not the last transfer coding")
                    if coding != "identity":
                        # The application gets the still-encoded body; what follows it on
                        # the connection is not worth trusting.
                        request.must_close = True
                else:
                    raise Rejected(501, "unsupported transfer coding")
    if transfer_encoding and not chunked:
        raise Rejected(400, "transfer coding does not end with chunked")  # RFC 9112 6.3
    if chunked:
        if request.version < (1, 1):
            raise Rejected(400, "chunked on HTTP/1.0")
        if content_length is not None:
            raise Rejected(400, "both Content-Length and Transfer-Encoding")
        request.chunked = True
    elif content_length is not None:
        if not (content_length.isascii() and content_length.isdigit()):
            raise Rejected(400, "invalid Content-Length")
        request.content_length = int(content_length)
