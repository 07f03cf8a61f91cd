"""Plain WSGI test applications for the integration tests.

Everything is routed by ``PATH_INFO`` inside :func:`app`.  No framework: the point
is to exercise the server's PEP 3333 implementation directly.

Routes
------
``/``               hello, with ``X-Worker-Pid``
``/environ``        the environ as JSON (str values verbatim, wsgi.* summarised);
                    ``/environ/<anything>`` too, to probe PATH_INFO decoding
``/echo``           echoes the request body; ``X-Body-Length`` / ``X-Body-Sha256``
``/upload``         reads the body with ``read(n)`` in chunks; JSON length/sha256/reads
``/readline``       reads the body via readline / readlines / iteration (``?mode=``)
``/download?size=N``  N deterministic bytes (see :func:`download_bytes`) with Content-Length
``/stream?chunks=N``  N chunks, no Content-Length (so chunked framing on HTTP/1.1)
``/write``          uses the ``write()`` callable returned by start_response
``/exc``            raises before start_response
``/exc-after``      raises after the first body chunk was yielded (``?chunked=1``: no C-L)
``/exc-info``       start_response, then start_response(..., exc_info) -> custom 500
``/status?code=N``  answers with that status
``/sleep?s=F``      sleeps, answers JSON {pid, start, end, ...} and ``X-Worker-Pid``;
                    ``&marker=P`` appends a line to file P when the sleep starts
``/order?dir=D&s=F``  appends "<X-Sent header> <start>" to D/<pid>.log as it starts, then
                    sleeps F seconds (0.005); for first-come-first-served tests
``/close-tracked?path=P``  iterable whose close() appends a line to file P
``/pid``            os.getpid()
``/fds``            JSON list of this process's open fds and their link targets
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import parse_qs

CHUNK = 64 * 1024

STATUS_REASONS = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No Content",
    301: "Moved Permanently",
    302: "Found",
    304: "Not Modified",
    400: "Bad Request",
    404: "Not Found",
    418: "I'm a teapot",
    500: "Internal Server Error",
    503: "Service Unavailable",
}

EXC_BEFORE_MESSAGE = "fdpass-test-exception-before-start-response"
EXC_AFTER_MESSAGE = "fdpass-test-exception-after-first-chunk"
EXC_INFO_MESSAGE = "fdpass-test-exc-info-error"


def download_bytes(size: int) -> bytes:
    """The deterministic content served by ``/download?size=N`` (non-periodic)."""
    return random.Random(size).randbytes(size)


def _query(environ: dict[str, Any]) -> dict[str, str]:
    qs = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    return {k: v[-1] for k, v in qs.items()}


def _json(start_response: Callable[..., Any], obj: Any, status: str = "200 OK",
          extra: list[tuple[str, str]] | None = None) -> list[bytes]:
    body = json.dumps(obj, sort_keys=True).encode("utf-8")
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    headers += extra or []
    start_response(status, headers)
    return [body]


def _text(start_response: Callable[..., Any], text: str | bytes, status: str = "200 OK",
          extra: list[tuple[str, str]] | None = None) -> list[bytes]:
    body = text.encode("utf-8") if isinstance(text, str) else text
    headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
    headers += extra or []
    start_response(status, headers)
    return [body]


def _pid_header() -> tuple[str, str]:
    return ("X-Worker-Pid", str(os.getpid()))


def _summarise(value: Any) -> Any:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return value
    if isinstance(value, tuple) and all(isinstance(v, int) for v in value):
        return list(value)
    return f"<{type(value).__name__}>"


# -- routes -------------------------------------------------------------------------

def hello(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    return _text(start_response, "Hello, World!\n", extra=[_pid_header()])


def environ_view(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    out: dict[str, Any] = {}
    for key, value in environ.items():
        if isinstance(value, str) or key.startswith("wsgi."):
            out[key] = _summarise(value)
    out["__keys__"] = sorted(environ.keys())
    out["__types__"] = {k: type(v).__name__ for k, v in environ.items()}
    # Probe the wsgi.input / wsgi.errors / file_wrapper interfaces a little.
    inp = environ.get("wsgi.input")
    out["__input_methods__"] = sorted(
        m for m in ("read", "readline", "readlines", "__iter__") if hasattr(inp, m))
    err = environ.get("wsgi.errors")
    out["__errors_methods__"] = sorted(
        m for m in ("write", "writelines", "flush") if hasattr(err, m))
    out["__file_wrapper_callable__"] = callable(environ.get("wsgi.file_wrapper"))
    return _json(start_response, out)


def echo(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = environ["wsgi.input"].read()
    return _text(start_response, body, extra=[
        ("X-Body-Length", str(len(body))),
        ("X-Body-Sha256", hashlib.sha256(body).hexdigest()),
        ("X-Content-Length-Env", environ.get("CONTENT_LENGTH", "")),
        _pid_header(),
    ])


def upload(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    size = int(_query(environ).get("chunk", str(CHUNK)))
    inp = environ["wsgi.input"]
    digest = hashlib.sha256()
    length = 0
    reads = 0
    while True:
        data = inp.read(size)
        reads += 1
        if not data:
            break
        if len(data) > size:
            return _text(start_response, f"read({size}) returned {len(data)} bytes",
                         "500 Internal Server Error")
        digest.update(data)
        length += len(data)
    return _json(start_response, {"length": length, "sha256": digest.hexdigest(),
                                  "reads": reads})


def readline_view(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    mode = _query(environ).get("mode", "readline")
    inp = environ["wsgi.input"]
    lines: list[bytes] = []
    if mode == "readline":
        while True:
            line = inp.readline()
            if not line:
                break
            lines.append(line)
    elif mode == "readline-limit":
        limit = int(_query(environ).get("limit", "4"))
        while True:
            line = inp.readline(limit)
            if not line:
                break
            lines.append(line)
    elif mode == "readlines":
        lines = list(inp.readlines())
    elif mode == "iter":
        lines = list(iter(inp))
    else:
        return _text(start_response, "bad mode", "400 Bad Request")
    return _json(start_response, {"mode": mode,
                                  "lines": [ln.decode("latin-1") for ln in lines]})


def download(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    size = int(_query(environ).get("size", "0"))
    data = download_bytes(size)
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(size)),
                              ("X-Sha256", hashlib.sha256(data).hexdigest())])
    view = memoryview(data)
    return (bytes(view[i:i + CHUNK]) for i in range(0, size, CHUNK))


def stream(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    n = int(_query(environ).get("chunks", "3"))
    start_response("200 OK", [("Content-Type", "text/plain")])

    def gen() -> Iterator[bytes]:
        for i in range(n):
            yield b"chunk %d\n" % i
    return gen()


def write_view(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    total = len(b"written-1;written-2;returned")
    write = start_response("200 OK", [("Content-Type", "text/plain"),
                                      ("Content-Length", str(total))])
    write(b"written-1;")
    write(b"written-2;")
    return [b"returned"]


def exc_before(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    raise RuntimeError(EXC_BEFORE_MESSAGE)


def exc_after(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    chunked = _query(environ).get("chunked") == "1"
    headers = [("Content-Type", "text/plain")]
    if not chunked:
        headers.append(("Content-Length", "1000"))
    start_response("200 OK", headers)

    def gen() -> Iterator[bytes]:
        yield b"first-chunk"
        raise RuntimeError(EXC_AFTER_MESSAGE)
    return gen()


def exc_info_view(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-Should-Not-Appear", "1")])
    try:
        raise ValueError(EXC_INFO_MESSAGE)
    except ValueError:
        body = b"custom error page"
        start_response("500 Internal Server Error",
                       [("Content-Type", "text/plain"), ("Content-Length", str(len(body))),
                        ("X-Exc-Info", "1")],
                       sys.exc_info())
        return [body]


def status_view(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    code = int(_query(environ).get("code", "200"))
    status = f"{code} {STATUS_REASONS.get(code, 'Unknown')}"
    if code in (204, 304) or code < 200:
        start_response(status, [])
        return []
    return _text(start_response, f"status {code}\n", status)


def sleep_view(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    q = _query(environ)
    seconds = float(q.get("s", "0.2"))
    if q.get("marker"):  # lets a test know the request is in progress in a worker
        with open(q["marker"], "a") as fh:
            fh.write(f"sleeping pid={os.getpid()}\n")
    start_wall = time.time()
    start = time.monotonic()  # CLOCK_MONOTONIC is system-wide on Linux: comparable across procs
    time.sleep(seconds)
    end = time.monotonic()
    return _json(start_response, {"pid": os.getpid(), "thread": threading.get_ident(),
                                  "start": start, "end": end, "start_wall": start_wall,
                                  "slept": seconds},
                 extra=[_pid_header()])


def order_view(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Record when this request was sent (the client's ``X-Sent``) and when it started here.

    Both are CLOCK_MONOTONIC readings, one clock for all processes, so a test can put the
    requests of every worker in one order. One file per worker: no two writers share one."""
    started = time.monotonic()  # first: the start is what is measured
    q = _query(environ)
    with open(os.path.join(q["dir"], f"{os.getpid()}.log"), "a") as fh:
        fh.write(f"{environ.get('HTTP_X_SENT', '-')} {started:.6f}\n")
    time.sleep(float(q.get("s", "0.005")))
    return _text(start_response, f"{started:.6f}", extra=[_pid_header()])


class _CloseTracked:
    def __init__(self, path: str, tag: str) -> None:
        self.path = path
        self.tag = tag
        self._items = [b"part-1;", b"part-2;", b"part-3"]

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._items)

    def close(self) -> None:
        with open(self.path, "a") as fh:
            fh.write(f"closed {self.tag} pid={os.getpid()}\n")


def close_tracked(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    q = _query(environ)
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(b"part-1;part-2;part-3")))])
    return _CloseTracked(q["path"], q.get("tag", "-"))


def pid_view(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    return _text(start_response, str(os.getpid()), extra=[_pid_header()])


def errors_view(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Writes the query string and a newline to wsgi.errors."""
    environ["wsgi.errors"].write(environ.get("QUERY_STRING", "") + "\n")
    return _text(start_response, "written")


def fds_view(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    fds = []
    for name in sorted(os.listdir("/proc/self/fd"), key=int):
        try:
            target = os.readlink("/proc/self/fd/" + name)
        except OSError:
            continue  # the fd of the listdir itself, already closed
        fds.append({"fd": int(name), "target": target})
    return _json(start_response, {"pid": os.getpid(), "fds": fds}, extra=[_pid_header()])


def _own_client_fd(environ: dict[str, Any]) -> int:
    """The fd number of this request's client socket, found through /proc."""
    remote_port = f"{int(environ['REMOTE_PORT']):04X}"
    inodes = set()
    with open("/proc/self/net/tcp") as fh:
        for line in fh.readlines()[1:]:
            fields = line.split()
            if fields[2].endswith(":" + remote_port):  # rem_address of our accepted socket
                inodes.add(f"socket:[{fields[9]}]")
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink("/proc/self/fd/" + name) in inodes:
                return int(name)
        except OSError:
            continue
    raise RuntimeError("client socket not found")


_FILLERS: list[int] = []


def fd_limit_view(environ: dict[str, Any], start_response: Callable[..., Any]
                  ) -> Iterable[bytes]:
    """Put this worker at its fd limit once this request's socket is closed.

    RLIMIT_NOFILE bounds fd *numbers*. The soft limit becomes this request's socket's number
    and every free number below it is filled, so once the worker closes the socket no fd
    passed to it can be installed any more (the kernel reports MSG_CTRUNC), while the fds
    it already has keep working.
    """
    import resource

    limit = _own_client_fd(environ)
    while True:
        fd = os.open("/dev/null", os.O_RDONLY)
        if fd > limit:
            os.close(fd)
            break
        _FILLERS.append(fd)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body))),
                              ("Connection", "close")])
    return [body]


ROUTES: dict[str, Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]] = {
    "/": hello,
    "/environ": environ_view,
    "/echo": echo,
    "/upload": upload,
    "/readline": readline_view,
    "/download": download,
    "/stream": stream,
    "/write": write_view,
    "/exc": exc_before,
    "/exc-after": exc_after,
    "/exc-info": exc_info_view,
    "/status": status_view,
    "/sleep": sleep_view,
    "/order": order_view,
    "/close-tracked": close_tracked,
    "/pid": pid_view,
    "/errors": errors_view,
    "/fds": fds_view,
    "/fd-limit": fd_limit_view,
}


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    handler = ROUTES.get(path)
    if handler is None and path.startswith("/environ/"):
        handler = environ_view  # so tests can probe PATH_INFO decoding
    if handler is None:
        return _text(start_response, "not found: {!r}\n".format(environ.get("PATH_INFO")),
                     "404 Not Found")
    return handler(environ, start_response)


# A variant name so that configs can point at ``tests.apps:application`` too.
application = app
