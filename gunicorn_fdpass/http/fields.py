"""Gunicorn's rules for header and trailer fields, and its header policy. Pure.

:func:`apply_fields` takes field names and values already split (by h11 for a request head,
by :func:`split_block` for a trailer section) and applies what Gunicorn 27 applies: the field
count limit, singletons (a repeated ``Host`` or ``Content-Type``), the ``Host`` syntax, the
``Expect`` rule, trusted proxy fields (``secure_scheme_headers``, ``forwarder_headers``) and
``header_map`` for names with an underscore. :func:`split_block` is the raw splitter for a
trailer section, which h11 reads more leniently than Gunicorn (see
:mod:`~gunicorn_fdpass.http.body_framing`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Final

from .memo import remember
from .request_rules import TOKEN, ParsedRequest, Rejected, RequestRules

__all__ = ["FORBIDDEN_TRAILERS", "apply_fields", "check_trailer", "split_block"]

_TOKEN_RE: Final = re.compile(TOKEN)
# RFC 9110 5.5: in a field value only SP, HTAB, VCHAR and obs-text.
_VALUE_INVALID_RE: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# A block made only of "token:value CRLF" lines with clean values and no obs-fold (a line
# starting with SP/HTAB never matches the token). One C-level pass.
_CLEAN_BLOCK_RE: Final = re.compile(rb"(?:" + TOKEN + rb":[\t\x20-\x7e\x80-\xff]*\r\n)*")
_FIELD_RE: Final = re.compile(rb"(" + TOKEN + rb"):[ \t]*([^\r]*?)[ \t]*\r\n")
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


#: Field names a rule of apply_fields looks at whoever sends them (with any underscore).
_SPECIAL: Final = _SINGLETONS | {"EXPECT", "SCRIPT_NAME"}
#: Field names as sent -> (upper case, looked at by a rule): a worker sees the same few names
#: again and again. Bounded, since the names clients send are not.
_NAMES: dict[bytes, tuple[str, bool]] = {}
_MAX_NAMES: Final = 512


def _remember(raw_name: bytes) -> tuple[str, bool]:
    name = raw_name.decode("latin-1").upper()
    return remember(_NAMES, bytes(raw_name), (name, name in _SPECIAL or "_" in name),
                    _MAX_NAMES)


def split_block(block: bytes, rules: RequestRules) -> list[tuple[bytes, bytes]]:
    """Split a field block (each line with its CRLF, no final blank line) into (name, value)
    pairs; the slow path finds the exact fault."""
    if _CLEAN_BLOCK_RE.fullmatch(block):
        # No line can be too long if the whole block is short; else measure every line.
        if len(block) > rules.field_size and (
            max(map(len, block.split(b"\r\n"))) + 2 > rules.field_size
        ):
            raise Rejected(431, "header field too large")
        pairs: list[tuple[bytes, bytes]] = _FIELD_RE.findall(block)
        return pairs
    return _split_slowly(block, rules)


def _split_slowly(block: bytes, rules: RequestRules) -> list[tuple[bytes, bytes]]:
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


def check_trailer(block: bytes, request: ParsedRequest, rules: RequestRules) -> None:
    """Validate a trailer section (lines with their CRLF, no final blank line)."""
    apply_fields(split_block(block, rules), request, rules, trusted=False, trailer=True)


def apply_fields(
    pairs: Iterable[tuple[bytes, bytes]],
    request: ParsedRequest,
    rules: RequestRules,
    *,
    trusted: bool,
    trailer: bool = False,
) -> list[tuple[str, str]]:
    """Apply Gunicorn's field rules and header policy to split fields. Header fields are
    stored on ``request`` (names upper case, as Gunicorn's ``req.headers``); trailer fields
    are returned. Raises :class:`Rejected`."""
    if trusted and not trailer:
        scheme_headers: Mapping[str, str] = rules.secure_scheme_headers
        forwarders = rules.forwarder_headers
    else:
        scheme_headers, forwarders = {}, frozenset()
    limit = rules.fields_limit
    kept: list[tuple[str, str]] = []
    seen: set[str] = set()
    scheme: str | None = None
    names = _NAMES
    # Only a trusted peer's fields or a trailer section need each field looked at closer.
    closer = trailer or bool(scheme_headers)
    for raw_name, raw_value in pairs:
        if len(kept) >= limit:
            raise Rejected(431, "too many header fields")
        known = names.get(raw_name)
        if known is None:
            known = _remember(raw_name)
        name, special = known
        value = raw_value.decode("latin-1")
        if not (special or closer):
            kept.append((name, value))  # the usual field: no rule below applies to it
            continue
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
