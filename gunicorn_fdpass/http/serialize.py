"""The one serializer of response heads, and the server's own small error responses.

Used by the worker for the application's responses, its ``100 Continue`` and its error
answers, and by the master
for the 408 and 503 it answers by itself, so every response carries ``Date`` and ``Server``
laid out the same way. Pure: returns bytes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from email.utils import formatdate
from typing import Final

from .memo import remember

__all__ = [
    "CONTINUE",
    "ErrorMessage",
    "error_message",
    "field_lines",
    "http_date",
    "reason_phrase",
    "serialize_head",
    "serialize_head_around",
]

_date_cache: tuple[int, str] = (0, "")


def http_date() -> str:
    """The current time as an IMF-fixdate, recomputed at most once per second."""
    global _date_cache
    now = int(time.time())
    cached_at, value = _date_cache
    if cached_at != now:
        value = formatdate(now, usegmt=True)
        _date_cache = (now, value)
    return value


# Reason phrases of the statuses the server answers by itself. Not taken from the standard
# library's ``http`` module: a master started as ``python -m gunicorn`` and re-executed by USR2
# runs gunicorn/__main__.py as a script, and Gunicorn's own ``http`` package then shadows it.
_REASONS: Final = {
    400: "Bad Request", 403: "Forbidden", 404: "Not Found", 408: "Request Timeout",
    411: "Length Required", 413: "Content Too Large", 414: "URI Too Long",
    417: "Expectation Failed", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}


def reason_phrase(code: int) -> str:
    """The reason phrase the server sends with ``code`` in its own answers."""
    return _REASONS.get(code, "Error")


def serialize_head(status_code: int, reason: str, headers: Iterable[tuple[str, str]]) -> bytes:
    """Status line and header fields of an HTTP/1.1 response, ending with the blank line.

    A ``Host`` field, should an application send one, goes first (as h11 laid it out when it
    still wrote responses).
    """
    lines = [f"HTTP/1.1 {status_code} {reason}\r\n"]
    hosts: list[str] = []
    for name, value in headers:
        # One pass; only a four-letter name can be Host.
        if len(name) == 4 and name.lower() == "host":
            hosts.append(f"{name}: {value}\r\n")
        else:
            lines.append(f"{name}: {value}\r\n")
    if hosts:
        lines[1:1] = hosts
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")


def field_lines(headers: Iterable[tuple[str, str]]) -> bytes:
    """Header fields as lines, in order, for :func:`serialize_head_around` (a Host field
    among them would not be moved to the front)."""
    return "".join([f"{name}: {value}\r\n" for name, value in headers]).encode("latin-1")


def serialize_head_around(
    status_code: int,
    reason: str,
    before: Iterable[tuple[str, str]],
    lines: bytes,
    after: Iterable[tuple[str, str]],
) -> bytes:
    """:func:`serialize_head` of ``before``, the fields laid out in ``lines`` (by
    :func:`field_lines`; no Host field among them) and ``after``: a head whose middle
    part repeats is laid out once. ``before`` and ``after`` are the server's own fields
    (a few sets, remembered), not the application's."""
    return b"".join((f"HTTP/1.1 {status_code} {reason}\r\n".encode("latin-1"),
                     _known_lines(tuple(before)), lines, _known_lines(tuple(after)), b"\r\n"))


# Header lines of the server's own small sets of fields (Server and Date, Transfer-Encoding
# and Connection), laid out once: the same few sets go out with every response. Bounded:
# the date changes every second.
_LINES: dict[tuple[tuple[str, str], ...], bytes] = {}
_MAX_LINES: Final = 64


def _known_lines(fields: tuple[tuple[str, str], ...]) -> bytes:
    lines = _LINES.get(fields)
    if lines is None:
        lines = remember(_LINES, fields, field_lines(fields), _MAX_LINES)
    return lines


#: The interim answer to ``Expect: 100-continue``.
CONTINUE: Final = serialize_head(100, "Continue", ())


@dataclass(frozen=True, slots=True)
class ErrorMessage:
    """One of the server's own answers: the bytes to send and what they say."""

    data: bytes
    status_code: int
    reason: str
    headers: list[tuple[str, str]]
    body_length: int  # body bytes in ``data`` (0 for HEAD)


def error_message(
    status_code: int,
    server_software: str,
    *,
    head: bool = False,
    extra_headers: Iterable[tuple[str, str]] = (),
) -> ErrorMessage:
    """A small plain-text answer with ``Connection: close`` (``head``: without its body)."""
    reason = reason_phrase(status_code)
    body = f"{status_code} {reason}\n".encode()
    headers = [("Server", server_software)] if server_software else []
    headers += [
        ("Date", http_date()),
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(body))),
        *extra_headers,
        ("Connection", "close"),
    ]
    data = serialize_head(status_code, reason, headers)
    if not head:
        data += body
    return ErrorMessage(data, status_code, reason, headers, 0 if head else len(body))
