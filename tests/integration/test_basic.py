"""HTTP/WSGI behaviour through a real Gunicorn master + workers.

One module-scoped server (2 workers, request hooks from a user config file, an access
log with a custom format) serves every test here; none of them disturbs it.
"""

from __future__ import annotations

import email.utils
import hashlib
import os
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tests import apps
from tests.conftest import attach_server
from tests.support.http import (
    IncompleteResponse,
    build_request,
    chunked_body,
    request,
)
from tests.support.server import GunicornServer, is_our_worker, worker_class_under_test
from tests.support.wait import poll, read_text

pytestmark = pytest.mark.integration

MB = 1024 * 1024

ACCESS_FORMAT = "AL|%(h)s|%(m)s|%(U)s|%(q)s|%(s)s|%(B)s|%(H)s|%({x-trace}i)s|%(a)s|%(p)s"

CONFIG = """
import os

HOOKS_FILE = {hooks!r}

def _log(line):
    with open(HOOKS_FILE, "a") as fh:
        fh.write(line + "\\n")

def pre_request(worker, req):
    _log("pre %s %s pid=%d" % (req.method, req.path, os.getpid()))

def post_request(worker, req, environ, resp):
    _log("post %s %s %s pid=%d path_info=%s" % (
        req.method, req.path, str(resp.status)[:3], os.getpid(), environ.get("PATH_INFO")))
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("basic")
    return {"dir": d, "hooks": d / "hooks.log", "access": d / "access.log"}


@pytest.fixture(scope="module")
def server(module_server_factory, files) -> GunicornServer:
    return module_server_factory(
        workers=2,
        config=CONFIG.format(hooks=str(files["hooks"])),
        args=["--access-logfile", str(files["access"]), "--access-logformat", ACCESS_FORMAT])


@pytest.fixture
def srv(server: GunicornServer, request: pytest.FixtureRequest) -> GunicornServer:
    attach_server(request, server)
    assert server.returncode is None, "the shared server died:\n" + server.log_text()
    return server


# -- basic methods ----------------------------------------------------------------

def test_get_hello(srv):
    resp = srv.get("/")
    assert resp.status == 200
    assert resp.reason == "OK"
    assert resp.body == b"Hello, World!\n"
    assert resp.header("Content-Type") == "text/plain"
    assert int(resp.header("X-Worker-Pid")) in srv.worker_pids()
    assert resp.version == "HTTP/1.1"


def test_unknown_path_404(srv):
    resp = srv.get("/no/such/route")
    assert resp.status == 404
    assert b"/no/such/route" in resp.body


def test_date_and_server_headers(srv):
    resp = srv.get("/")
    server_hdr = resp.header("Server")
    assert server_hdr, resp.headers
    date = resp.header("Date")
    assert date, resp.headers
    parsed = email.utils.parsedate_to_datetime(date)
    assert date.endswith("GMT")
    assert abs((parsed - datetime.now(timezone.utc)).total_seconds()) < 120
    # exactly one of each
    assert len(resp.header_all("Date")) == 1
    assert len(resp.header_all("Server")) == 1


def test_post_content_length(srv):
    body = b"hello=world&x=" + bytes(range(256)) * 4
    resp = srv.request("POST", "/echo", body=body,
                       headers={"Content-Type": "application/octet-stream"})
    assert resp.status == 200
    assert resp.body == body
    assert resp.header("X-Body-Length") == str(len(body))
    assert resp.header("X-Body-Sha256") == hashlib.sha256(body).hexdigest()
    assert resp.header("X-Content-Length-Env") == str(len(body))


def test_post_empty_body(srv):
    resp = srv.request("POST", "/echo", body=b"")
    assert resp.status == 200
    assert resp.body == b""
    assert resp.header("X-Body-Length") == "0"


def test_post_chunked(srv):
    chunks = [b"hello ", b"chunked ", b"world", b"x" * 70000]
    data = b"".join(chunks)
    resp = srv.request("POST", "/echo", body=chunked_body(chunks),
                       headers={"Transfer-Encoding": "chunked"})
    assert resp.status == 200
    assert resp.body == data
    assert resp.header("X-Body-Length") == str(len(data))
    assert resp.header("X-Body-Sha256") == hashlib.sha256(data).hexdigest()


def test_post_chunked_with_trailers(srv):
    chunks = [b"abc", b"def"]
    resp = srv.request("POST", "/echo", body=chunked_body(chunks, [("X-Trailer", "t")]),
                       headers={"Transfer-Encoding": "chunked", "Trailer": "X-Trailer"})
    assert resp.status == 200
    assert resp.body == b"abcdef"


def test_head_has_no_body_but_keeps_content_length(srv):
    with srv.connect() as conn:
        conn.send(build_request("HEAD", "/download?size=1234",
                                headers={"Connection": "close"}))
        resp = conn.read_response(method="HEAD")
        assert resp.status == 200
        assert resp.header("Content-Length") == "1234"
        assert resp.body == b""
        # The server closes (Connection: close); nothing, in particular no body, follows.
        assert conn.wait_closed(timeout=5)
        assert conn.remaining() == b""


def test_head_and_get_agree(srv):
    head = srv.request("HEAD", "/")
    get = srv.get("/")
    assert head.status == get.status == 200
    assert head.header("Content-Length") == get.header("Content-Length") == str(len(get.body))
    assert head.header("Content-Type") == get.header("Content-Type")


def test_expect_100_continue(srv):
    body = b"body sent only after 100 Continue"
    with srv.connect() as conn:
        conn.send(build_request("POST", "/echo", headers={
            "Content-Length": str(len(body)), "Expect": "100-continue"}))
        interim = conn.read_response(method="POST", skip_informational=False, timeout=5)
        assert interim.status == 100, interim
        assert interim.version == "HTTP/1.1"
        conn.send(body)
        resp = conn.read_response(method="POST")
        assert resp.status == 200
        assert resp.body == body


def test_upload_10mb_sha256(srv):
    data = os.urandom(10 * MB)
    resp = srv.request("POST", "/upload?chunk=65536", body=data, timeout=60)
    assert resp.status == 200, resp.body[:500]
    info = resp.json()
    assert info["length"] == len(data)
    assert info["sha256"] == hashlib.sha256(data).hexdigest()
    assert info["reads"] >= len(data) // 65536 + 1


def test_upload_chunked_1mb_small_reads(srv):
    data = os.urandom(MB + 17)
    pieces = [data[i:i + 8191] for i in range(0, len(data), 8191)]
    resp = srv.request("POST", "/upload?chunk=1000", body=chunked_body(pieces),
                       headers={"Transfer-Encoding": "chunked"}, timeout=60)
    assert resp.status == 200, resp.body[:500]
    info = resp.json()
    assert info["length"] == len(data)
    assert info["sha256"] == hashlib.sha256(data).hexdigest()


def test_download_10mb(srv):
    size = 10 * MB
    resp = srv.get(f"/download?size={size}", timeout=60)
    assert resp.status == 200
    assert resp.framing == "content-length"
    assert resp.header("Content-Length") == str(size)
    assert len(resp.body) == size
    expected = apps.download_bytes(size)
    assert hashlib.sha256(resp.body).hexdigest() == hashlib.sha256(expected).hexdigest()
    assert resp.header("X-Sha256") == hashlib.sha256(expected).hexdigest()


def test_stream_is_chunked(srv):
    resp = srv.get("/stream?chunks=5")
    assert resp.status == 200
    assert resp.framing == "chunked"
    assert resp.header("Content-Length") is None
    assert resp.body == b"".join(b"chunk %d\n" % i for i in range(5))


@pytest.mark.parametrize("mode,expected", [
    ("readline", ["a\n", "bb\n", "\n", "ccc"]),
    ("readlines", ["a\n", "bb\n", "\n", "ccc"]),
    ("iter", ["a\n", "bb\n", "\n", "ccc"]),
    ("readline-limit", ["a\n", "bb", "\n", "\n", "cc", "c"]),
])
def test_readline_variants(srv, mode, expected):
    resp = srv.request("POST", f"/readline?mode={mode}&limit=2", body=b"a\nbb\n\nccc")
    assert resp.status == 200, resp.body
    assert resp.json() == {"mode": mode, "lines": expected}


def test_write_callable(srv):
    resp = srv.get("/write")
    assert resp.status == 200
    assert resp.body == b"written-1;written-2;returned"


# -- errors ---------------------------------------------------------------------

def test_app_exception_gives_500_and_is_logged(srv):
    start = srv.log_size()
    resp = srv.get("/exc")
    assert resp.status == 500
    assert apps.EXC_BEFORE_MESSAGE.encode() not in resp.body  # no traceback leak
    m = srv.wait_for_log(apps.EXC_BEFORE_MESSAGE, timeout=5, start=start)
    assert "Traceback" in srv.log_text()[start:m.end()]
    assert "RuntimeError" in srv.log_text()[start:m.end() + 10]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_exception_after_headers_aborts_connection(srv, chunked):
    start = srv.log_size()
    with srv.connect(timeout=10) as conn:
        conn.send(build_request("GET", f"/exc-after?chunked={int(chunked)}"))
        with pytest.raises(IncompleteResponse) as info:
            conn.read_response()
    partial = info.value.response
    assert partial is not None, "no response head at all"
    assert partial.status == 200
    assert not partial.complete
    # PEP 3333: a yielded chunk is transmitted before the next one is requested
    assert partial.body.startswith(b"first-chunk")
    assert len(partial.body) < 1000
    srv.wait_for_log(apps.EXC_AFTER_MESSAGE, timeout=5, start=start)


@pytest.mark.xfail(not is_our_worker(), strict=False,
                   reason="Gunicorn's own workers keep the headers of the first start_response; "
                          "PEP 3333 says the exc_info call replaces them")
def test_exc_info_replaces_status(srv):
    resp = srv.get("/exc-info")
    assert resp.status == 500
    assert resp.body == b"custom error page"
    assert resp.header("X-Exc-Info") == "1"
    assert resp.header("X-Should-Not-Appear") is None


@pytest.mark.parametrize("code", [200, 201, 404, 418, 503])
def test_status_codes(srv, code):
    resp = srv.get(f"/status?code={code}")
    assert resp.status == code
    assert resp.reason == apps.STATUS_REASONS[code]
    assert resp.body == b"status %d\n" % code


@pytest.mark.parametrize("code", [204, 304])
def test_no_body_statuses(srv, code):
    with srv.connect() as conn:
        conn.send(build_request("GET", f"/status?code={code}",
                                headers={"Connection": "close"}))
        resp = conn.read_response()
        assert resp.status == code
        assert resp.header("Transfer-Encoding") is None
        assert resp.header("Content-Length") in (None, "0")
        assert conn.wait_closed(timeout=5)
        assert conn.remaining() == b"", f"bytes after a {code} response"


def test_iterable_close_is_called(srv, files):
    marker = files["dir"] / (f"close-{uuid.uuid4().hex}.txt")
    tag = uuid.uuid4().hex
    resp = srv.get(f"/close-tracked?path={marker}&tag={tag}")
    assert resp.status == 200
    assert resp.body == b"part-1;part-2;part-3"
    text = poll(lambda: read_text(marker), timeout=5)
    assert text.count(f"closed {tag} ") == 1, text


# -- environ ----------------------------------------------------------------------

PEP3333_KEYS = [
    "REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "CONTENT_TYPE",
    "CONTENT_LENGTH", "SERVER_NAME", "SERVER_PORT", "SERVER_PROTOCOL",
    "wsgi.version", "wsgi.url_scheme", "wsgi.input", "wsgi.errors", "wsgi.multithread",
    "wsgi.multiprocess", "wsgi.run_once",
]


def test_environ_completeness(srv):
    body = b"12345"
    with srv.connect() as conn:
        client_port = conn.sock.getsockname()[1]
        conn.send(build_request(
            "POST", "/environ/caf%C3%A9?a=1&b=%20x",
            headers=[("Host", f"127.0.0.1:{srv.port}"), ("Content-Type", "text/plain"),
                     ("X-Custom-Header", "custom value"), ("Accept", "a/b")],
            body=body))
        resp = conn.read_response(method="POST")
    assert resp.status == 200
    env = resp.json()
    for key in [*PEP3333_KEYS, "wsgi.file_wrapper", "wsgi.input_terminated", "REMOTE_ADDR",
                "REMOTE_PORT", "RAW_URI", "HTTP_HOST"]:
        assert key in env["__keys__"], key
    assert env["REQUEST_METHOD"] == "POST"
    assert env["SCRIPT_NAME"] == ""
    assert env["PATH_INFO"] == "/environ/caf\u00c3\u00a9"  # bytes decoded as latin-1
    assert env["QUERY_STRING"] == "a=1&b=%20x"  # not decoded
    assert env["RAW_URI"] == "/environ/caf%C3%A9?a=1&b=%20x"
    assert env["CONTENT_TYPE"] == "text/plain"
    assert env["CONTENT_LENGTH"] == "5"
    assert env["SERVER_NAME"] == "127.0.0.1"
    assert env["SERVER_PORT"] == str(srv.port)
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["HTTP_HOST"] == f"127.0.0.1:{srv.port}"
    assert env["HTTP_X_CUSTOM_HEADER"] == "custom value"
    assert env["HTTP_ACCEPT"] == "a/b"
    assert "HTTP_CONTENT_TYPE" not in env["__keys__"]
    assert "HTTP_CONTENT_LENGTH" not in env["__keys__"]
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["REMOTE_PORT"] == str(client_port)
    assert env["wsgi.version"] == [1, 0]
    assert env["wsgi.url_scheme"] == "http"
    if worker_class_under_test() == "gthread":
        assert isinstance(env["wsgi.multithread"], bool)  # gthread always says True
    else:
        assert env["wsgi.multithread"] is False  # no --threads
    assert env["wsgi.multiprocess"] is True  # 2 workers
    assert env["wsgi.run_once"] is False
    assert env["wsgi.input_terminated"] is True
    assert env["__input_methods__"] == ["__iter__", "read", "readline", "readlines"]
    assert env["__errors_methods__"] == ["flush", "write", "writelines"]
    assert env["__file_wrapper_callable__"] is True
    # CGI variables are native strings
    for key, typ in env["__types__"].items():
        if key.isupper():
            assert typ == "str", (key, typ)


def test_environ_get_without_body(srv):
    resp = srv.get("/environ")
    env = resp.json()
    assert env["REQUEST_METHOD"] == "GET"
    assert env["PATH_INFO"] == "/environ"
    assert env["QUERY_STRING"] == ""
    assert env.get("CONTENT_LENGTH", "") in ("", "0")


# -- logging and hooks --------------------------------------------------------------

def test_access_log_custom_format(srv, files):
    trace = uuid.uuid4().hex
    resp = srv.get(f"/status?code=201&t={trace}",
                   headers={"X-Trace": trace, "User-Agent": "fdpass-it/1.0"})
    assert resp.status == 201
    size = len(b"status 201\n")
    expected = (f"AL|127.0.0.1|GET|/status|code=201&t={trace}|201|{size}|HTTP/1.1|{trace}"
                "|fdpass-it/1.0")

    def find():
        for line in read_text(files["access"]).splitlines():
            if trace in line:
                return line
        return None
    line = poll(find, timeout=5)
    assert line is not None, read_text(files["access"])
    # the last field, %(p)s, is "<pid>" of the worker
    assert line.rsplit("|", 1)[0] == expected
    pid = int(line.rsplit("|", 1)[1].strip("<>"))
    assert pid in srv.worker_pids() or pid in srv.booted_pids()


def test_pre_and_post_request_hooks(srv, files):
    probe = f"/hooks-probe-{uuid.uuid4().hex}"
    resp = srv.get(probe)
    assert resp.status == 404

    def lines():
        got = [ln for ln in read_text(files["hooks"]).splitlines() if probe in ln]
        return got if len(got) >= 2 else None
    got = poll(lines, timeout=5)
    assert got, read_text(files["hooks"])
    assert len(got) == 2, got
    assert got[0].startswith(f"pre GET {probe} ")
    assert got[1].startswith(f"post GET {probe} 404 ")
    assert got[1].endswith(f"path_info={probe}")
    pre_pid = got[0].split("pid=")[1]
    post_pid = got[1].split("pid=")[1].split()[0]
    assert pre_pid == post_pid


# -- many connections, HTTP/1.0, keep-alive -----------------------------------------

def test_300_connections_in_a_row(srv):
    pids = set()
    for i in range(300):
        resp = srv.get("/", timeout=10)
        assert resp.status == 200, (i, resp)
        assert resp.body == b"Hello, World!\n"
        pids.add(int(resp.header("X-Worker-Pid")))
    assert pids <= set(srv.booted_pids())


def test_http10_request(srv):
    with srv.connect() as conn:
        conn.send(b"GET / HTTP/1.0\r\n\r\n")
        resp = conn.read_response()
        assert resp.status == 200
        assert resp.framing in ("content-length", "close")
        assert resp.body == b"Hello, World!\n"
        # No keep-alive was asked for: the server must close.
        assert conn.wait_closed(timeout=5)


def test_http10_streaming_is_not_chunked(srv):
    with srv.connect() as conn:
        conn.send(b"GET /stream?chunks=4 HTTP/1.0\r\n\r\n")
        resp = conn.read_response()
        assert resp.status == 200
        assert resp.header("Transfer-Encoding") is None
        assert resp.framing == "close"
        assert resp.body == b"".join(b"chunk %d\n" % i for i in range(4))


@pytest.mark.keepalive
def test_keepalive_two_requests_one_connection(srv):
    with srv.connect() as conn:
        r1 = conn.request("GET", "/")
        assert r1.status == 200 and r1.keep_alive
        r2 = conn.request("POST", "/echo", body=b"second")
        assert r2.status == 200
        assert r2.body == b"second"
        r3 = conn.request("GET", "/stream?chunks=2")
        assert r3.framing == "chunked"
        assert r3.body == b"chunk 0\nchunk 1\n"
        r4 = conn.request("GET", "/")
        assert r4.status == 200


@pytest.mark.keepalive
def test_pipelining_in_order(srv):
    bodies = [b"first", b"second" * 1000, b"third"]
    data = b"".join(build_request("POST", "/echo", body=b) for b in bodies)
    data += build_request("GET", "/stream?chunks=3")
    data += build_request("GET", "/", headers={"Connection": "close"})
    with srv.connect() as conn:
        conn.send(data)
        for b in bodies:
            resp = conn.read_response(method="POST")
            assert resp.status == 200
            assert resp.body == b
        resp = conn.read_response()
        assert resp.body == b"chunk 0\nchunk 1\nchunk 2\n"
        resp = conn.read_response()
        assert resp.body == b"Hello, World!\n"
        assert conn.wait_closed(timeout=5)


@pytest.mark.keepalive
def test_many_idle_keepalive_connections(srv):
    """More open keep-alive connections than workers: every one is answered twice."""
    conns = [srv.connect() for _ in range(12)]
    try:
        for i, c in enumerate(conns):
            r = c.request("POST", "/echo", body=b"first-%d" % i)
            assert r.body == b"first-%d" % i
        for i, c in reversed(list(enumerate(conns))):
            r = c.request("POST", "/echo", body=b"second-%d" % i)
            assert r.status == 200
            assert r.body == b"second-%d" % i
    finally:
        for c in conns:
            c.close()


def test_client_disconnect_mid_request_does_not_break_server(srv):
    with srv.connect() as conn:
        conn.send(build_request("POST", "/echo", headers={"Content-Length": "100000"})
                  + b"x" * 1000)
    # the server must still answer others
    for _ in range(5):
        assert srv.get("/").status == 200


def test_one_shot_helper_roundtrip(srv):
    # The module-level helper works with explicit port too.
    resp = request(srv.port, "GET", "/pid")
    assert resp.status == 200
    assert int(resp.body) in srv.booted_pids()

