"""A tiny raw-socket HTTP/1.x client for exact-bytes integration tests.

It deliberately does very little: build request bytes, send them, and read one
response at a time with correct framing (no body / Content-Length / chunked /
read-until-close), so tests can check keep-alive, pipelining, 1xx responses and
truncated bodies.  Every read is bounded by a socket timeout.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

DEFAULT_TIMEOUT = 10.0


class HTTPProtocolError(Exception):
    """The server sent something that is not valid HTTP/1.x framing."""


class IncompleteResponse(Exception):
    """The connection ended (or timed out) before the response was complete."""

    def __init__(self, message: str, response: Response | None, raw: bytes) -> None:
        super().__init__(message)
        self.response = response
        self.raw = raw


@dataclass
class Response:
    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    framing: str = "none"  # "none" | "content-length" | "chunked" | "close"
    complete: bool = True
    trailers: list[tuple[str, str]] = field(default_factory=list)
    raw_head: bytes = b""
    informational: list[Response] = field(default_factory=list)

    def header(self, name: str, default: str | None = None) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return default

    def header_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def has_header(self, name: str) -> bool:
        return self.header(name) is not None

    @property
    def keep_alive(self) -> bool:
        """Whether the response allows the connection to be reused (RFC 7230 6.3)."""
        conn = ",".join(self.header_all("connection")).lower()
        tokens = {t.strip() for t in conn.split(",") if t.strip()}
        if self.framing == "close":
            return False
        if "close" in tokens:
            return False
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return True

    def json(self) -> object:
        import json
        return json.loads(self.body.decode("utf-8"))

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def build_request(method: str, target: str, headers: Iterable[tuple[str, str]] | dict[str, str]
                  | None = None, body: bytes | None = None, version: str = "HTTP/1.1",
                  host: str | None = "127.0.0.1", content_length: bool = True) -> bytes:
    """Serialise a request.  Adds Host (HTTP/1.1) and Content-Length (if a body and
    neither Content-Length nor Transfer-Encoding was given) unless told otherwise."""
    hdrs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    names = {k.lower() for k, _ in hdrs}
    if host is not None and "host" not in names and version == "HTTP/1.1":
        hdrs.insert(0, ("Host", host))
    if (body is not None and content_length and "content-length" not in names
            and "transfer-encoding" not in names):
        hdrs.append(("Content-Length", str(len(body))))
    head = f"{method} {target} {version}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in hdrs)
    head += "\r\n"
    return head.encode("latin-1") + (body or b"")


def chunked_body(chunks: Iterable[bytes], trailers: Iterable[tuple[str, str]] = ()) -> bytes:
    out = bytearray()
    for c in chunks:
        if c:
            out += b"%x\r\n" % len(c) + c + b"\r\n"
    out += b"0\r\n"
    for k, v in trailers:
        out += (f"{k}: {v}\r\n").encode("latin-1")
    out += b"\r\n"
    return bytes(out)


class RawHTTPConnection:
    """One TCP connection; send raw bytes, read framed responses."""

    def __init__(self, host: str = "127.0.0.1", port: int = 80,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.buf = bytearray()
        self.eof = False

    # -- context manager --------------------------------------------------------
    def __enter__(self) -> RawHTTPConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    # -- sending ----------------------------------------------------------------
    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, method: str, target: str, headers: Iterable[tuple[str, str]]
                | dict[str, str] | None = None, body: bytes | None = None,
                version: str = "HTTP/1.1") -> Response:
        self.send(build_request(method, target, headers, body, version))
        return self.read_response(method=method)

    def shutdown_write(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    # -- receiving --------------------------------------------------------------
    def _fill(self, deadline: float) -> bool:
        """Read more bytes into the buffer. False on EOF (or connection reset)."""
        if self.eof:
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("timed out waiting for data from the server")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(256 * 1024)
        except ConnectionResetError:
            data = b""
        except TimeoutError as e:
            raise TimeoutError("timed out waiting for data from the server") from e
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def _read_until(self, marker: bytes, deadline: float) -> bytes | None:
        while True:
            idx = self.buf.find(marker)
            if idx >= 0:
                out = bytes(self.buf[:idx + len(marker)])
                del self.buf[:idx + len(marker)]
                return out
            if not self._fill(deadline):
                return None

    def _read_exact(self, n: int, deadline: float) -> bytes | None:
        while len(self.buf) < n:
            if not self._fill(deadline):
                return None
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_head(self, timeout: float | None = None) -> Response | None:
        """Read and parse one status line + headers. None on clean EOF before any byte."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        raw = self._read_until(b"\r\n\r\n", deadline)
        if raw is None:
            if not self.buf:
                return None
            raise IncompleteResponse("EOF inside the response head", None, bytes(self.buf))
        lines = raw[:-4].split(b"\r\n")
        try:
            version, status, *reason = lines[0].decode("latin-1").split(" ", 2)
            status_code = int(status)
        except ValueError as e:
            raise HTTPProtocolError(f"bad status line {lines[0]!r}") from e
        if not version.startswith("HTTP/"):
            raise HTTPProtocolError(f"bad status line {lines[0]!r}")
        headers = []
        for line in lines[1:]:
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep or name != name.strip() or not name:
                raise HTTPProtocolError(f"bad header line {line!r}")
            headers.append((name, value.strip(" \t")))
        return Response(version=version, status=status_code, reason=reason[0] if reason else "",
                        headers=headers, raw_head=raw)

    def read_response(self, method: str = "GET", timeout: float | None = None,
                      skip_informational: bool = True, allow_incomplete: bool = False
                      ) -> Response:
        """Read one full response.

        ``skip_informational``: 1xx responses are collected into ``.informational`` and
        the final response is returned; otherwise a 1xx response is returned as is.
        ``allow_incomplete``: return a truncated response with ``complete=False`` instead
        of raising :class:`IncompleteResponse`.
        """
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        informational: list[Response] = []
        while True:
            resp = self.read_head(timeout=max(0.0, deadline - time.monotonic()))
            if resp is None:
                raise IncompleteResponse("connection closed before a response", None, b"")
            if 100 <= resp.status < 200 and resp.status != 101:
                if not skip_informational:
                    return resp
                informational.append(resp)
                continue
            break
        resp.informational = informational
        try:
            self._read_body(resp, method, deadline)
        except IncompleteResponse as e:
            if not allow_incomplete:
                raise
            assert e.response is not None
            return e.response
        return resp

    def _read_body(self, resp: Response, method: str, deadline: float) -> None:
        te = ",".join(resp.header_all("transfer-encoding")).lower()
        cl = resp.header_all("content-length")
        if method.upper() == "HEAD" or resp.status in (204, 304) or 100 <= resp.status < 200:
            resp.framing = "none"
            return
        if te:
            if te.split(",")[-1].strip() != "chunked":
                resp.framing = "close"
                self._read_to_eof(resp, deadline)
                return
            resp.framing = "chunked"
            self._read_chunked(resp, deadline)
            return
        if cl:
            if len(set(cl)) != 1:
                raise HTTPProtocolError(f"conflicting Content-Length headers {cl!r}")
            n = int(cl[0])
            resp.framing = "content-length"
            data = self._read_exact(n, deadline)
            if data is None:
                resp.body = bytes(self.buf)
                self.buf.clear()
                resp.complete = False
                raise IncompleteResponse(f"EOF after {len(resp.body)} of {n} body bytes",
                                         resp, resp.raw_head + resp.body)
            resp.body = data
            return
        resp.framing = "close"
        self._read_to_eof(resp, deadline)

    def _read_to_eof(self, resp: Response, deadline: float) -> None:
        while self._fill(deadline):
            pass
        resp.body = bytes(self.buf)
        self.buf.clear()

    def _read_chunked(self, resp: Response, deadline: float) -> None:
        body = bytearray()

        def incomplete(what: str) -> IncompleteResponse:
            resp.body = bytes(body)
            resp.complete = False
            return IncompleteResponse(f"EOF inside chunked body ({what})", resp,
                                      resp.raw_head + bytes(body))
        while True:
            line = self._read_until(b"\r\n", deadline)
            if line is None:
                raise incomplete("chunk size")
            size_s = line[:-2].split(b";", 1)[0].strip()
            try:
                size = int(size_s, 16)
            except ValueError as e:
                raise HTTPProtocolError(f"bad chunk size line {line!r}") from e
            if size == 0:
                break
            data = self._read_exact(size + 2, deadline)
            if data is None:
                body += self.buf
                self.buf.clear()
                raise incomplete("chunk data")
            if data[-2:] != b"\r\n":
                raise HTTPProtocolError("chunk not terminated by CRLF")
            body += data[:-2]
        while True:
            line = self._read_until(b"\r\n", deadline)
            if line is None:
                raise incomplete("trailers")
            if line == b"\r\n":
                break
            name, _, value = line[:-2].decode("latin-1").partition(":")
            resp.trailers.append((name, value.strip()))
        resp.body = bytes(body)

    def wait_closed(self, timeout: float = 5.0) -> bool:
        """True if the server closes the connection within ``timeout`` (unread bytes
        are discarded); False if it is still open when the time is up."""
        deadline = time.monotonic() + timeout
        try:
            while self._fill(deadline):
                pass
        except TimeoutError:
            return False
        return True

    def remaining(self) -> bytes:
        return bytes(self.buf)


def request(port: int, method: str = "GET", target: str = "/",
            headers: Iterable[tuple[str, str]] | dict[str, str] | None = None,
            body: bytes | None = None, version: str = "HTTP/1.1", host: str = "127.0.0.1",
            timeout: float = DEFAULT_TIMEOUT, allow_incomplete: bool = False) -> Response:
    """One request on a fresh connection (the connection is closed afterwards)."""
    with RawHTTPConnection(host, port, timeout=timeout) as conn:
        conn.send(build_request(method, target, headers, body, version))
        return conn.read_response(method=method, allow_incomplete=allow_incomplete)


def get(port: int, target: str = "/", **kw: object) -> Response:
    return request(port, "GET", target, **kw)  # type: ignore[arg-type]
