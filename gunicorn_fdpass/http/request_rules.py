"""Gunicorn's request rules as data, the parsed request, and where a request head ends. Pure.

:class:`RequestRules` holds Gunicorn 27's request settings (same limits, same compatibility
flags, same proxy trust), :class:`Rejected` carries the status a refused request is answered
with, :class:`ParsedRequest` is an accepted request head, and :func:`find_head_end` finds the
end of a head in the bytes received so far (refusing at once one that is too long or uses a
bare LF). Reading the head itself is :mod:`~gunicorn_fdpass.http.request_head` (h11 with
Gunicorn's rules around it); field rules are :mod:`~gunicorn_fdpass.http.fields`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Final

from ..errors import FdpassError
from .memo import remember

__all__ = [
    "AddressAllowList",
    "ParsedRequest",
    "Rejected",
    "RequestRules",
    "find_head_end",
]

#: Gunicorn's hard ceilings (``gunicorn.http.message``).
MAX_REQUEST_LINE: Final = 8190
MAX_HEADERS: Final = 32768
DEFAULT_FIELD_SIZE: Final = 8190

#: RFC 9110 5.6.2 token (a method, a field name).
TOKEN: Final = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
# The end of a head, or a bare LF (RFC 9112 2.2: every line of a head ends with CRLF).
_END_OR_BARE_LF_RE: Final = re.compile(rb"\r\n\r\n|(?<!\r)\n")
#: Used for a request line when limit_request_line is 0 ("unlimited"): memory is not.
UNLIMITED_LINE: Final = 1024 * 1024

DEFAULT_SECURE_SCHEME_HEADERS: Final = {
    "X-FORWARDED-PROTOCOL": "ssl",
    "X-FORWARDED-PROTO": "https",
    "X-FORWARDED-SSL": "on",
}


class Rejected(FdpassError):
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
            decision = remember(self._decisions, host, self._decide(host),
                                _MAX_REMEMBERED_PEERS)
        return decision

    def _decide(self, host: Any) -> bool:
        try:
            ip = ipaddress.ip_address(host)
        except (ValueError, TypeError):
            return False
        return any(ip in net for net in self.networks)


@dataclass(frozen=True)
class RequestRules:
    """Gunicorn's request settings, as this parser applies them. The derived limits are
    computed once (read for every request)."""

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

    @cached_property
    def line_limit(self) -> int:
        """Effective request-line limit (0: none)."""
        limit = self.limit_request_line
        if limit < 0 or limit >= MAX_REQUEST_LINE:
            return MAX_REQUEST_LINE
        return limit

    @cached_property
    def fields_limit(self) -> int:
        limit = self.limit_request_fields
        return MAX_HEADERS if limit <= 0 or limit > MAX_HEADERS else limit

    @cached_property
    def field_size(self) -> int:
        return self.limit_request_field_size if self.limit_request_field_size > 0 else (
            DEFAULT_FIELD_SIZE
        )

    @cached_property
    def max_header_block(self) -> int:
        """Bound on the header section (after the request line), as Gunicorn computes it."""
        return self.fields_limit * (self.field_size + 2) + 4

    @cached_property
    def max_head(self) -> int:
        """The longest request head these rules can accept: request line, CRLF, header section.

        The master peeks at most this much before handing a head over, so that the worker,
        not the master, refuses one that is too long."""
        return (self.line_limit or UNLIMITED_LINE) + 2 + self.max_header_block


@dataclass(slots=True)  # made for every request, and read throughout it
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
    end = _scan(data, max(start, resume - 3))
    if end >= 0:
        if data.find(b"\r\n", start) - start > limit:
            raise Rejected(414, "request line too long")
        return end
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


def _scan(data: bytes | bytearray, pos: int) -> int:
    """From ``pos``: the index just past the first blank line, or -1; Rejected if a bare LF
    comes first."""
    blank = data.find(b"\r\n\r\n", pos)
    stop = len(data) if blank < 0 else blank + 4
    # Every LF is part of a CRLF when the counts agree: two C-level passes, much faster than
    # the regular expression, which decides the rest (a bare LF, or a CRLF split at pos).
    if data.count(b"\n", pos, stop) == data.count(b"\r\n", pos, stop):
        return stop if blank >= 0 else -1
    match = _END_OR_BARE_LF_RE.search(data, pos)
    if match is None:
        return -1
    if match.end() - match.start() == 1:
        raise Rejected(400, "bare LF as a line terminator")
    return match.end()
