"""Pure PEP 3333 adapter: environ building, ``wsgi.input``, ``start_response`` and
``wsgi.file_wrapper``.

Nothing in here touches a socket: the I/O layer (:mod:`gunicorn_fdpass.worker.cycle`) supplies
callables for pulling body bytes and for pushing ``write()`` data, which keeps this module
unit-testable without any networking.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import IO, Any, Final, Protocol
from urllib.parse import unquote_to_bytes

from .http.memo import remember
from .http.request_rules import ParsedRequest

__all__ = [
    "Address",
    "ExcInfo",
    "FileWrapper",
    "InputStream",
    "ResponseStarter",
    "StartResponseCallable",
    "WSGIApp",
    "WriteCallable",
    "build_environ",
    "split_target",
    "validate_headers",
    "validate_status",
]

#: A socket address as returned by ``getsockname()``/``getpeername()``: ``(host, port, ...)``
#: for TCP, a path (``str`` or ``bytes``) for a Unix socket, or ``None`` when unknown.
Address = tuple[Any, ...] | str | bytes | None

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
WriteCallable = Callable[[bytes], None]


class StartResponseCallable(Protocol):
    """The ``start_response`` signature from PEP 3333."""

    def __call__(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: ExcInfo | None = None,
        /,
    ) -> WriteCallable: ...


WSGIApp = Callable[[dict[str, Any], StartResponseCallable], Iterable[bytes]]

# RFC 9110 token characters: the only ones allowed in a header name.
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Header values: visible latin-1 characters, space and tab. Control characters (CR/LF in
# particular) would let an application split the response.
_HEADER_VALUE_RE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
# "200 OK": three digits, then optionally a space and a reason phrase without controls.
_STATUS_RE = re.compile(r"([1-9][0-9]{2})(?: ([\t\x20-\x7e\x80-\xff]*))?")
# RFC 9110 7.6.1 hop-by-hop fields: PEP 3333 forbids applications to send them, because the
# server owns the connection (and a Transfer-Encoding from the app would desync the framing).
# "Connection" is the exception: applications commonly send "Connection: close" to ask for the
# connection to end, which the server can honour safely (http/response.py does; other values of
# it are dropped).
HOP_BY_HOP = frozenset(
    {
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
_ABSOLUTE_FORM_RE = re.compile(rb"^[A-Za-z][A-Za-z0-9+.\-]*://")
# Header fields that passed validate_headers: most responses repeat the same few (a
# Content-Type, a constant header), and a lookup costs less than two regular expressions.
# Bounded, since values such as cookies differ from one response to the next.
_VALID_HEADERS: dict[tuple[str, str], None] = {}
_MAX_VALID_HEADERS = 1024
# Whole lists of such fields that passed, as tuples: an application repeats a few.
_VALID_LISTS: dict[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]] = {}
_MAX_VALID_LISTS: Final = 256
# environ keys of request header names ("USER-AGENT" -> "HTTP_USER_AGENT", "CONTENT-TYPE" ->
# "CONTENT_TYPE"): clients send the same few names over and over. Bounded: names are the
# client's choice.
_ENVIRON_KEYS: dict[str, str] = {}
_MAX_ENVIRON_KEYS = 1024
# SERVER_NAME and SERVER_PORT by (Host, default port): a server is reached under a few names.
# Bounded: the Host field is the client's choice.
_HOSTS: dict[tuple[str, str], tuple[str, str]] = {}
_MAX_HOSTS: Final = 256
_PROTOCOLS: Final = {(1, 1): "HTTP/1.1", (1, 0): "HTTP/1.0"}
# Statuses that passed validate_status, with their (code, reason): applications use a few.
_VALID_STATUSES: dict[str, tuple[int, str]] = {}
_MAX_VALID_STATUSES = 256


# --------------------------------------------------------------------------------------------
# environ


def split_target(target: bytes) -> tuple[bytes, bytes, bytes]:
    """Split a request target into ``(path, query, fragment)`` (all still percent-encoded).

    Handles origin-form (``/a?b``), absolute-form (``http://host/a?b``, whose authority is
    dropped and whose empty path becomes ``/``) and asterisk-form (``*``).
    """
    if _ABSOLUTE_FORM_RE.match(target):
        rest = target.split(b"://", 1)[1]
        # The authority ends at the first '/', '?' or '#'.
        cut = len(rest)
        for sep in (b"/", b"?", b"#"):
            pos = rest.find(sep)
            if pos != -1 and pos < cut:
                cut = pos
        target = rest[cut:]
        if not target.startswith(b"/"):
            target = b"/" + target
    target, _, fragment = target.partition(b"#")
    path, _, query = target.partition(b"?")
    return path, query, fragment


def _split_host(host: str, default_port: str) -> tuple[str, str]:
    """Split a Host header value into (name, port), IPv6 literals included."""
    if host.startswith("["):
        end = host.find("]")
        if end != -1:
            name, rest = host[: end + 1], host[end + 1 :]
            if rest.startswith(":") and rest[1:]:
                return name, rest[1:]
            return name, default_port
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit():
        return name, port
    return host, default_port


def _environ_key(name: str) -> str:
    """The environ key of a request header field name (upper case), remembered."""
    if name == "CONTENT-TYPE" or name == "CONTENT-LENGTH":
        key = name.replace("-", "_")
    else:
        key = "HTTP_" + name.replace("-", "_")
    return remember(_ENVIRON_KEYS, name, key, _MAX_ENVIRON_KEYS)


def _server_name(server: Address) -> tuple[str, str]:
    """SERVER_NAME and SERVER_PORT from our own socket address, for a request without Host."""
    if isinstance(server, tuple) and len(server) >= 2:
        return str(server[0]), str(server[1])
    return "localhost", ""


def build_environ(
    request: ParsedRequest,
    *,
    server: Address | Callable[[], Address],
    client: Address,
    url_scheme: str,
    script_name: str,
    wsgi_input: Any,
    wsgi_errors: Any,
    multithread: bool,
    multiprocess: bool = True,
    server_software: str = "",
) -> dict[str, Any]:
    """Build a complete PEP 3333 environ for a parsed ``request``.

    ``server``/``client`` are the local and peer socket addresses (``server`` may be a
    callable that returns it: it is only needed for a request without ``Host``).
    ``script_name`` is the mount point of the application (no trailing slash needed); when the
    decoded path starts with it, it is stripped from ``PATH_INFO``. A trusted proxy's
    ``SCRIPT_NAME`` field (Gunicorn's ``forwarder_headers``) replaces it.
    ``request.headers`` already went through the header policy (``header_map``), and
    ``request.scheme`` (from ``secure_scheme_headers``), when set, replaces ``url_scheme``.
    """
    if request.script_name is not None:
        script_name = request.script_name
    # PEP 3333: PATH_INFO is the percent-decoded path, each byte mapped to one code point.
    path = request.path
    path_info = unquote_to_bytes(path).decode("latin-1") if "%" in path else path
    script_name = script_name.rstrip("/")
    if script_name and (path_info == script_name or path_info.startswith(script_name + "/")):
        path_info = path_info[len(script_name) :]
    url_scheme = request.scheme or url_scheme

    default_port = "443" if url_scheme == "https" else "80"
    major, minor = request.version
    environ: dict[str, Any] = {
        "REQUEST_METHOD": request.method,
        "SCRIPT_NAME": script_name,
        "PATH_INFO": path_info,
        "QUERY_STRING": request.query,
        "RAW_URI": request.target,
        "SERVER_PROTOCOL": _PROTOCOLS.get(request.version) or f"HTTP/{major}.{minor}",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": url_scheme,
        "wsgi.input": wsgi_input,
        "wsgi.errors": wsgi_errors,
        "wsgi.multithread": multithread,
        "wsgi.multiprocess": multiprocess,
        "wsgi.run_once": False,
        "wsgi.file_wrapper": FileWrapper,
        "wsgi.input_terminated": True,
    }
    if server_software:
        environ["SERVER_SOFTWARE"] = server_software

    keys = _ENVIRON_KEYS
    for name, value in request.headers:
        key = keys.get(name)
        if key is None:
            key = _environ_key(name)
        if key[0] == "H" and key in environ:
            # A repeated field (HTTP_*): its values joined, as one field would list them.
            environ[key] += "," + value
        else:
            environ[key] = value  # CONTENT_TYPE and CONTENT_LENGTH: the last one
    host = environ.get("HTTP_HOST")

    if host:
        split = _HOSTS.get((host, default_port))
        if split is None:
            split = remember(_HOSTS, (host, default_port), _split_host(host, default_port),
                             _MAX_HOSTS)
        environ["SERVER_NAME"], environ["SERVER_PORT"] = split
    else:
        environ["SERVER_NAME"], environ["SERVER_PORT"] = _server_name(
            server() if callable(server) else server)

    if isinstance(client, tuple) and len(client) >= 2:
        environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = str(client[0]), str(client[1])
    elif isinstance(client, bytes):
        environ["REMOTE_ADDR"] = client.decode("latin-1")
    elif isinstance(client, str):
        environ["REMOTE_ADDR"] = client
    else:
        environ["REMOTE_ADDR"] = ""
    return environ


# --------------------------------------------------------------------------------------------
# wsgi.input


class InputStream:
    """File-like ``wsgi.input`` over ``read_chunk()``, which returns the next piece of the
    request body and ``b""`` at its end.

    The stream knows nothing about framing (Content-Length or chunked): the I/O layer decodes
    it. ``on_first_read`` runs once, just before the first body bytes are requested, which is
    the moment to send ``100 Continue`` to a client that waits for it.
    """

    def __init__(
        self,
        read_chunk: Callable[[], bytes],
        on_first_read: Callable[[], None] | None = None,
    ) -> None:
        self._read_chunk = read_chunk
        self._on_first_read = on_first_read
        self._buffer = bytearray()
        self._eof = False

    def _fill(self) -> bool:
        """Append one more chunk to the buffer; False once the body is exhausted."""
        if self._eof:
            return False
        if self._on_first_read is not None:
            callback, self._on_first_read = self._on_first_read, None
            callback()
        chunk = self._read_chunk()
        if not chunk:
            self._eof = True
            return False
        self._buffer += chunk
        return True

    def _take(self, size: int) -> bytes:
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def read(self, size: int | None = -1) -> bytes:
        """Read up to ``size`` bytes; everything that is left when ``size`` is None or < 0."""
        if size is None or size < 0:
            while self._fill():
                pass
            return self._take(len(self._buffer))
        while len(self._buffer) < size and self._fill():
            pass
        return self._take(size)

    def readline(self, size: int | None = -1) -> bytes:
        """Read one line including its ``\\n``, or at most ``size`` bytes if size >= 0."""
        limit = -1 if size is None else size
        scanned = 0
        while True:
            pos = self._buffer.find(b"\n", scanned)
            if pos != -1:
                end = pos + 1
                break
            # Do not rescan bytes already known to hold no newline.
            scanned = len(self._buffer)
            if 0 <= limit <= len(self._buffer) or not self._fill():
                end = len(self._buffer)
                break
        if 0 <= limit < end:
            end = limit
        return self._take(end)

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        """Read lines until EOF, or until their total size reaches ``hint`` if hint > 0."""
        lines: list[bytes] = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                return lines

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def readable(self) -> bool:
        """Always True: this is an input stream."""
        return True

    def close(self) -> None:
        """No-op: the connection owns the underlying socket."""


# --------------------------------------------------------------------------------------------
# start_response


def validate_status(status: object) -> tuple[int, str]:
    """Check a WSGI status string and return ``(code, reason)``."""
    if type(status) is str:
        known = _VALID_STATUSES.get(status)
        if known is not None:
            return known
    if not isinstance(status, str):
        raise TypeError(f"status must be a str, not {type(status).__name__}")
    match = _STATUS_RE.fullmatch(status)
    if match is None:
        raise ValueError(f"invalid status line {status!r}")
    parsed = int(match.group(1)), match.group(2) or ""
    if type(status) is str:
        remember(_VALID_STATUSES, status, parsed, _MAX_VALID_STATUSES)
    return parsed


def validate_headers(headers: object) -> list[tuple[str, str]]:
    """Check WSGI response headers (str names that are tokens, latin-1 str values without
    control characters, no hop-by-hop field) and return them as a new list of 2-tuples."""
    if not isinstance(headers, (list, tuple)):
        raise TypeError(f"headers must be a list, not {type(headers).__name__}")
    try:
        known = _VALID_LISTS.get(tuple(headers))
    except TypeError:  # an unhashable item: not a valid header, found below
        known = None
    if known is not None:
        return list(known)
    checked: list[tuple[str, str]] = []
    valid = _VALID_HEADERS
    for item in headers:
        if type(item) is tuple and item in valid:
            checked.append(item)
            continue
        if not isinstance(item, tuple) or len(item) != 2:
            raise TypeError(f"header must be a (name, value) tuple, not {item!r}")
        name, value = item
        if not isinstance(name, str):
            raise TypeError(f"header name must be a str, not {type(name).__name__}")
        if not isinstance(value, str):
            raise TypeError(f"value of header {name!r} must be a str, not {type(value).__name__}")
        if not _TOKEN_RE.fullmatch(name):
            raise ValueError(f"invalid header name {name!r}")
        if not _HEADER_VALUE_RE.fullmatch(value):
            # Name only: the value may be sensitive (cookies, tokens).
            raise ValueError(f"invalid value for header {name!r}")
        if name.lower() in HOP_BY_HOP:
            raise ValueError(f"hop-by-hop header {name!r} is not allowed from a WSGI application")
        checked.append((name, value))
        if type(name) is str and type(value) is str:  # str subclasses may compare oddly
            remember(valid, (name, value), None, _MAX_VALID_HEADERS)
    if all(type(item) is tuple and item in valid for item in checked):
        remember(_VALID_LISTS, tuple(checked), tuple(checked), _MAX_VALID_LISTS)
    return checked


class ResponseStarter:
    """Holds the response status and headers of one request and implements PEP 3333's
    ``start_response`` rules.

    ``write`` is the I/O layer's implementation of the ``write()`` callable. The I/O layer
    sets :attr:`headers_sent` once the status line and headers are fixed for the client (after
    which they can no longer be replaced, even with ``exc_info``).
    """

    def __init__(self, write: WriteCallable) -> None:
        self._write = write
        self.headers_sent = False
        self.status: str | None = None
        self.status_code = 0
        self.reason = ""
        self.headers: list[tuple[str, str]] = []

    @property
    def started(self) -> bool:
        """True once ``start_response`` has been called successfully."""
        return self.status is not None

    def start_response(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: ExcInfo | None = None,
        /,
    ) -> WriteCallable:
        """PEP 3333 ``start_response``: record status and headers, return ``write``."""
        if exc_info is not None:
            try:
                if self.headers_sent:
                    # Too late to change the response: let the error propagate to the server.
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                # Break the frame <-> traceback cycle, as PEP 3333 recommends.
                exc_info = None
        elif self.status is not None:
            raise RuntimeError("start_response() called a second time without exc_info")
        code, reason = validate_status(status)
        checked = validate_headers(headers)
        self.status, self.status_code, self.reason, self.headers = status, code, reason, checked
        return self._write

    __call__ = start_response


# --------------------------------------------------------------------------------------------
# wsgi.file_wrapper


class FileWrapper:
    """``wsgi.file_wrapper``: iterate over ``filelike`` in ``blksize`` blocks.

    The I/O layer recognises instances of this class and may send ``filelike`` with
    ``sendfile()`` instead of iterating, when it has a real file descriptor.
    """

    def __init__(self, filelike: IO[bytes], blksize: int = 8192) -> None:
        self.filelike = filelike
        self.blksize = blksize

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        data = self.filelike.read(self.blksize)
        if data:
            return data
        raise StopIteration

    def fileno(self) -> int | None:
        """The wrapped file's descriptor, or None if it has none (e.g. BytesIO)."""
        try:
            return self.filelike.fileno()
        except (AttributeError, OSError, ValueError):
            # io.UnsupportedOperation derives from OSError and ValueError.
            return None

    def close(self) -> None:
        """Close the wrapped file if it can be closed (PEP 3333)."""
        close = getattr(self.filelike, "close", None)
        if close is not None:
            close()
