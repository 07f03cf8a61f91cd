"""PROXY protocol v1 and v2 headers, as Gunicorn 27's ``proxy_protocol`` reads them. Pure.

``parse`` looks at the first bytes of a connection and returns what a PROXY header says, or
that there is none (in ``auto`` mode the header is optional, as in Gunicorn), or that more
bytes are needed. A header from a peer outside ``proxy_allow_ips`` is refused with 403, a
malformed one with 400 (:class:`~gunicorn_fdpass.http.request_rules.Rejected`).

Parking: the header arrives once, at the start of a connection, but this worker may hand an
idle keep-alive connection back to the master and get it again later, maybe in another worker
process. So what the header said travels with the connection's leftover bytes as a one-line
*resume marker* (:func:`resume_marker`), authenticated with a secret shared by the master and
its forked workers; only a marker carrying that secret is ever honoured as such.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from dataclasses import dataclass
from typing import Final

from .request_rules import Rejected

__all__ = ["NEED_DATA", "NOT_PROXY", "ProxyInfo", "parse", "resume_marker", "take_header"]

V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
_V1_MAX: Final = 107  # the v1 spec's longest header, CRLF included
# Generated at import, in the master (which loads the worker class) before any fork, so every
# worker it forks knows it; nothing outside the server ever sees it.
_SECRET: Final = os.urandom(16).hex().encode("ascii")
_MARKER: Final = b"PROXY FDPASS-" + _SECRET + b" "


class _Need:
    def __repr__(self) -> str:
        return "NEED_DATA"


class _NotProxy:
    def __repr__(self) -> str:
        return "NOT_PROXY"


NEED_DATA: Final = _Need()
NOT_PROXY: Final = _NotProxy()


@dataclass(frozen=True)
class ProxyInfo:
    """What a PROXY header said (addresses are None for v2 LOCAL / UNSPEC)."""

    protocol: str  # "TCP4", "TCP6", "LOCAL" or "UNSPEC"
    client_addr: str | None
    client_port: int | None
    proxy_addr: str | None
    proxy_port: int | None
    consumed: int  # length of the header (or marker) at the start of the data

    def environ(self) -> dict[str, str]:
        """The environ keys Gunicorn sets from a PROXY header."""
        if self.client_addr is None:
            return {"PROXY_PROTOCOL": self.protocol}
        return {
            "PROXY_PROTOCOL": self.protocol,
            "REMOTE_ADDR": self.client_addr,
            "REMOTE_PORT": str(self.client_port),
            "PROXY_ADDR": str(self.proxy_addr),
            "PROXY_PORT": str(self.proxy_port),
        }


def parse(data: bytes | bytearray, mode: str, peer_allowed: bool) -> ProxyInfo | _Need | _NotProxy:
    """Read a PROXY header (``mode``: "v1", "v2" or "auto") or a resume marker at the start of
    ``data``. Raises Rejected (403 for a peer not allowed, 400 for a malformed header)."""
    head = bytes(data[: len(_MARKER)])
    if head == _MARKER:
        return _parse_marker(data)
    if len(head) < len(_MARKER) and _MARKER.startswith(head):
        return NEED_DATA
    if mode in ("v2", "auto") and len(head) < 12 and V2_SIGNATURE.startswith(head):
        return NEED_DATA
    if mode in ("v2", "auto") and data[:12] == V2_SIGNATURE:
        if not peer_allowed:
            raise Rejected(403, "PROXY header from a peer not in proxy_allow_ips")
        return _parse_v2(data)
    if mode in ("v1", "auto") and data[:6] == b"PROXY ":
        if not peer_allowed:
            raise Rejected(403, "PROXY header from a peer not in proxy_allow_ips")
        return _parse_v1(data)
    return NOT_PROXY


def take_header(buf: bytearray, mode: str, peer_allowed: bool) -> tuple[bool, ProxyInfo | None]:
    """Consume a PROXY header (or resume marker) at the start of ``buf``, as :func:`parse`
    reads it. ``(True, what it says)`` once known (None: no header, or one that names no
    client); ``(False, None)`` while more bytes are needed (nothing consumed). Raises Rejected
    as :func:`parse` does."""
    got = parse(buf, mode, peer_allowed)
    if isinstance(got, ProxyInfo):
        del buf[: got.consumed]
        return True, None if got.protocol == "NONE" else got
    return got is NOT_PROXY, None


#: The address syntax each PROXY v1 protocol takes (as strict as inet_pton: no leading zeros).
_V1_ADDRESS: Final = {"TCP4": ipaddress.IPv4Address, "TCP6": ipaddress.IPv6Address}


def _parse_v1(data: bytes | bytearray) -> ProxyInfo | _Need:
    end = data.find(b"\r\n")
    if end < 0:
        if len(data) > _V1_MAX:
            raise Rejected(400, "PROXY line too long")
        return NEED_DATA
    fields = bytes(data[:end]).decode("latin-1").split(" ")
    if len(fields) != 6:
        raise Rejected(400, "invalid PROXY line")
    _, proto, src, dst, sport, dport = fields
    address = _V1_ADDRESS.get(proto)
    if address is None:
        raise Rejected(400, "unsupported PROXY protocol")
    try:
        if "%" in src or "%" in dst:  # an IPv6 scope: no address a proxy can send
            raise ValueError("scoped address")
        address(src), address(dst)
        ports = int(sport), int(dport)
    except ValueError:
        raise Rejected(400, "invalid PROXY line") from None
    if not all(0 <= p <= 65535 for p in ports):
        raise Rejected(400, "invalid PROXY port")
    return ProxyInfo(proto, src, ports[0], dst, ports[1], end + 2)


def _parse_v2(data: bytes | bytearray) -> ProxyInfo | _Need:
    if len(data) < 16:
        return NEED_DATA
    ver_cmd, fam_proto, length = struct.unpack_from(">BBH", data, 12)
    if ver_cmd >> 4 != 2:
        raise Rejected(400, "unsupported PROXY v2 version")
    command = ver_cmd & 0x0F
    if command not in (0, 1):
        raise Rejected(400, "unsupported PROXY v2 command")
    total = 16 + length
    if len(data) < total:
        return NEED_DATA
    if command == 0:
        return ProxyInfo("LOCAL", None, None, None, None, total)
    family, transport = fam_proto >> 4, fam_proto & 0x0F
    if transport != 1:
        raise Rejected(400, "PROXY v2: only TCP is supported")
    body = bytes(data[16:total])
    if family == 1:
        if length < 12:
            raise Rejected(400, "PROXY v2: short IPv4 address block")
        src, dst = ipaddress.IPv4Address(body[0:4]), ipaddress.IPv4Address(body[4:8])
        sport, dport = struct.unpack_from(">HH", body, 8)
        return ProxyInfo("TCP4", str(src), sport, str(dst), dport, total)
    if family == 2:
        if length < 36:
            raise Rejected(400, "PROXY v2: short IPv6 address block")
        src6, dst6 = ipaddress.IPv6Address(body[0:16]), ipaddress.IPv6Address(body[16:32])
        sport, dport = struct.unpack_from(">HH", body, 32)
        return ProxyInfo("TCP6", str(src6), sport, str(dst6), dport, total)
    if family == 0:
        return ProxyInfo("UNSPEC", None, None, None, None, total)
    raise Rejected(400, "PROXY v2: unsupported address family")


def resume_marker(info: ProxyInfo | None) -> bytes:
    """The line to put before a parked connection's leftover bytes: it restores ``info`` (or
    the fact that the connection had no PROXY header) when the connection is served again."""
    if info is None:
        return _MARKER + b"NONE\r\n"
    fields = [info.protocol, info.client_addr, info.client_port, info.proxy_addr,
              info.proxy_port]
    return _MARKER + " ".join("-" if f is None else str(f) for f in fields).encode() + b"\r\n"


def _parse_marker(data: bytes | bytearray) -> ProxyInfo | _Need:
    end = data.find(b"\r\n")
    if end < 0:
        return NEED_DATA
    fields = bytes(data[len(_MARKER) : end]).decode("latin-1").split(" ")
    consumed = end + 2
    if fields == ["NONE"]:
        return ProxyInfo("NONE", None, None, None, None, consumed)
    try:
        proto, src, sport, dst, dport = fields
        return ProxyInfo(proto, _opt(src), _opt_int(sport), _opt(dst), _opt_int(dport),
                         consumed)
    except ValueError:
        raise Rejected(400, "invalid resume marker") from None


def _opt(value: str) -> str | None:
    return None if value == "-" else value


def _opt_int(value: str) -> int | None:
    return None if value == "-" else int(value)
