"""The Flask example (``examples/flask_app.py``) over real HTTP through a real Gunicorn.

One module-scoped server (2 workers) serves every test. The app is the example wrapped by
:func:`probed_app`, a transparent WSGI middleware that reports (in ``X-Probe-*`` response
headers) which ``wsgi.file_wrapper`` the server offered and what type of iterable the app
returned, without replacing that iterable, so the server still sees its own file wrapper
(and may ``sendfile()`` it).
"""

from __future__ import annotations

import hashlib
import json
import random
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.conftest import attach_server
from tests.support.http import Response, build_request, chunked_body
from tests.support.server import GunicornServer, is_our_worker

pytestmark = pytest.mark.integration

MB = 1024 * 1024
OUR_FILE_WRAPPER = "gunicorn_fdpass.wsgi.FileWrapper"
UPLOAD_TIMEOUT = 60.0


# -- probe (runs inside the gunicorn workers) -------------------------------------------------

def _qualname(obj: Any) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def probe(app: Callable[..., Iterable[bytes]], environ: dict[str, Any],
          start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Call ``app``; delay its start_response until it returned, to add the probe headers.
    The iterable is returned unchanged. (Neither Flask nor Django uses ``write()``.)"""
    captured: list[Any] = []

    def deferred(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        captured[:] = [status, headers, exc_info]

        def write(data: bytes) -> None:
            raise RuntimeError("the probe does not support write()")
        return write

    result = app(environ, deferred)
    status, headers, exc_info = captured
    headers = [*headers,
               ("X-Probe-Iterable", _qualname(result)),
               ("X-Probe-File-Wrapper", _qualname(environ.get("wsgi.file_wrapper")))]
    start_response(status, headers, exc_info)
    return result


def probed_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    from examples.flask_app import app  # imported in the worker, on the first request
    return probe(app, environ, start_response)


# -- helpers ----------------------------------------------------------------------------------

def det_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def multipart(fields: dict[str, str], files: dict[str, tuple[str, str, bytes]]
              ) -> tuple[str, bytes]:
    """(Content-Type, body) of a multipart/form-data body; files: name -> (filename, type, data)."""
    boundary = "fdpass-" + uuid.uuid4().hex
    out = bytearray()
    for name, value in fields.items():
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n"
                ).encode() + value.encode() + b"\r\n"
    for name, (filename, ctype, data) in files.items():
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; "
                f"filename=\"{filename}\"\r\nContent-Type: {ctype}\r\n\r\n").encode()
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return f"multipart/form-data; boundary={boundary}", bytes(out)


def uneven_chunks(data: bytes, seed: int) -> Iterator[bytes]:
    """``data`` cut into chunks of random sizes (1 byte .. 100 KiB)."""
    rng = random.Random(seed)
    i = 0
    while i < len(data):
        n = rng.choice((1, 7, 4096, 65536, 100 * 1024, rng.randint(1, 100 * 1024)))
        yield data[i:i + n]
        i += n


class CookieJar:
    """Just enough of a browser's cookie jar for one host."""

    def __init__(self) -> None:
        self.cookies: dict[str, str] = {}

    def update(self, resp: Response) -> SimpleCookie:
        jar: SimpleCookie = SimpleCookie()
        for value in resp.header_all("set-cookie"):
            jar.load(value)
        for name, morsel in jar.items():
            expired = morsel["max-age"] == "0" or (
                morsel["expires"] and "1970" in morsel["expires"])
            if expired or morsel.value == "":
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = morsel.value
        return jar

    def headers(self) -> list[tuple[str, str]]:
        if not self.cookies:
            return []
        return [("Cookie", "; ".join(f"{k}={v}" for k, v in self.cookies.items()))]


# -- fixtures ---------------------------------------------------------------------------------

FILES = {"big.bin": det_bytes(3 * MB + 123, seed=1), "small.txt": b"small file\n" * 3}


@pytest.fixture(scope="module")
def server(module_server_factory: Callable[..., GunicornServer],
           tmp_path_factory: pytest.TempPathFactory) -> GunicornServer:
    files_dir = tmp_path_factory.mktemp("flask-files")
    for name, data in FILES.items():
        (files_dir / name).write_bytes(data)
    return module_server_factory(app="tests.test_frameworks_flask:probed_app", workers=2,
                                 env={"EXAMPLE_FILES_DIR": str(files_dir)}, ready_timeout=30)


@pytest.fixture(autouse=True)
def _show_log_on_failure(request: pytest.FixtureRequest, server: GunicornServer) -> None:
    attach_server(request, server)


# -- tests ------------------------------------------------------------------------------------

def test_index(server: GunicornServer) -> None:
    resp = server.get("/")
    assert resp.status == 200
    assert resp.body == b"Hello from Flask!\n"
    assert resp.header("content-type", "").startswith("text/plain")


def test_json_api(server: GunicornServer) -> None:
    payload = {"name": "widget \u2603", "tags": ["a", "b"], "price": 12.5}
    resp = server.request("POST", "/api/items", body=json.dumps(payload).encode(),
                          headers={"Content-Type": "application/json"})
    assert resp.status == 201, resp.text
    assert resp.header("content-type") == "application/json"
    item = resp.json()
    assert isinstance(item, dict)
    assert isinstance(item.pop("id"), int)
    assert item == payload

    bad = server.request("POST", "/api/items", body=b"{not json",
                         headers={"Content-Type": "application/json"})
    assert bad.status == 400
    assert bad.json() == {"error": "expected a JSON object with a string 'name'"}

    listing = server.get("/api/items")
    assert listing.status == 200
    assert isinstance(listing.json(), dict)
    assert isinstance(listing.json()["items"], list)  # type: ignore[index]


def test_form_post(server: GunicornServer) -> None:
    body = urlencode([("name", "Zo\u00eb & co"), ("tag", "x"), ("tag", "y=z"),
                      ("empty", "")]).encode()
    resp = server.request("POST", "/form", body=body,
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status == 200, resp.text
    assert resp.json() == {"fields": {"name": ["Zo\u00eb & co"], "tag": ["x", "y=z"],
                                      "empty": [""]}}


def test_multipart_upload_10mb(server: GunicornServer) -> None:
    data = det_bytes(10 * MB, seed=10)
    ctype, body = multipart({"note": "ten megabytes"},
                            {"file": ("big upload.bin", "application/octet-stream", data)})
    resp = server.request("POST", "/upload", body=body, headers={"Content-Type": ctype},
                          timeout=UPLOAD_TIMEOUT)
    assert resp.status == 200, resp.text
    assert resp.json() == {"filename": "big upload.bin", "content_type": "application/octet-stream",
                           "size": len(data), "sha256": sha256(data),
                           "fields": {"note": "ten megabytes"}}


def test_chunked_raw_upload(server: GunicornServer) -> None:
    """Werkzeug honours wsgi.input_terminated: a chunked body is read to its end."""
    data = det_bytes(2 * MB + 17, seed=20)
    resp = server.request("POST", "/upload-raw", body=chunked_body(uneven_chunks(data, 20)),
                          headers={"Transfer-Encoding": "chunked",
                                   "Content-Type": "application/octet-stream"},
                          timeout=UPLOAD_TIMEOUT)
    assert resp.status == 200, resp.text
    assert resp.json() == {"size": len(data), "sha256": sha256(data)}


def test_chunked_multipart_upload(server: GunicornServer) -> None:
    data = det_bytes(3 * MB, seed=21)
    ctype, body = multipart({"k": "v"}, {"file": ("c.bin", "application/octet-stream", data)})
    resp = server.request("POST", "/upload", body=chunked_body(uneven_chunks(body, 21)),
                          headers={"Transfer-Encoding": "chunked", "Content-Type": ctype},
                          timeout=UPLOAD_TIMEOUT)
    assert resp.status == 200, resp.text
    got = resp.json()
    assert isinstance(got, dict)
    assert (got["size"], got["sha256"], got["fields"]) == (len(data), sha256(data), {"k": "v"})


def expected_stream(chunks: int, size: int) -> bytes:
    return b"".join(f"chunk {i}\n".encode().ljust(size, b".") for i in range(chunks))


def test_streaming_response(server: GunicornServer) -> None:
    resp = server.get("/stream?chunks=200&size=1000")
    assert resp.status == 200
    assert resp.framing == "chunked"
    assert not resp.has_header("content-length")
    assert resp.body == expected_stream(200, 1000)


def test_streaming_response_is_not_buffered(server: GunicornServer) -> None:
    """The head and first chunk arrive while the generator is still sleeping."""
    pause = 1.0
    with server.connect() as conn:
        conn.send(build_request("GET", f"/stream?chunks=3&size=16&pause={pause}"))
        head = conn.read_head(timeout=10)
        t_head = time.monotonic()
        assert head is not None and head.status == 200
        conn._read_body(head, "GET", time.monotonic() + 10)
        t_done = time.monotonic()
    assert head.body == expected_stream(3, 16)
    # If the server buffered the whole response, head and body would arrive together.
    assert t_done - t_head >= pause * 0.7, (t_head, t_done)


@pytest.mark.parametrize("name", sorted(FILES))
def test_send_file_through_file_wrapper(server: GunicornServer, name: str) -> None:
    resp = server.get(f"/files/{name}", timeout=30)
    assert resp.status == 200
    assert resp.header("content-length") == str(len(FILES[name]))
    assert resp.body == FILES[name]
    offered = resp.header("x-probe-file-wrapper")
    # send_file handed the open file to environ["wsgi.file_wrapper"], and the app's iterable
    # reaching the server is that wrapper itself.
    assert resp.header("x-probe-iterable") == offered
    if is_our_worker(server.worker_class):
        assert offered == OUR_FILE_WRAPPER


def test_send_file_range_and_conditional(server: GunicornServer) -> None:
    data = FILES["big.bin"]
    part = server.get("/files/big.bin", headers={"Range": "bytes=1000-1999"})
    assert part.status == 206
    assert part.header("content-range") == f"bytes 1000-1999/{len(data)}"
    assert part.body == data[1000:2000]

    etag = server.get("/files/small.txt").header("etag")
    assert etag
    cached = server.get("/files/small.txt", headers={"If-None-Match": etag})
    assert cached.status == 304
    assert cached.body == b""


def test_head_of_file(server: GunicornServer) -> None:
    resp = server.request("HEAD", "/files/big.bin")
    assert resp.status == 200
    assert resp.header("content-length") == str(len(FILES["big.bin"]))
    assert resp.body == b""


def test_redirect(server: GunicornServer) -> None:
    resp = server.get("/old")
    assert resp.status == 302
    location = resp.header("location")
    assert location in ("/", server.url("/"), "http://127.0.0.1/")
    assert server.get("/").body == b"Hello from Flask!\n"


def test_404_page(server: GunicornServer) -> None:
    for target in ("/no/such/page", "/files/missing.bin"):
        resp = server.get(target)
        assert resp.status == 404, target
        assert resp.header("content-type", "").startswith("text/html")
        assert b"Not Found" in resp.body


def test_500_page_and_logged(server: GunicornServer) -> None:
    start = server.log_size()
    resp = server.get("/boom")
    assert resp.status == 500
    assert b"Internal Server Error" in resp.body
    assert b"flask example boom" not in resp.body  # no traceback leaks to the client
    server.wait_for_log(r"Exception on /boom \[GET\]", timeout=5, start=start)
    m = server.wait_for_log(r"RuntimeError: flask example boom", timeout=5, start=start)
    assert "Traceback (most recent call last)" in server.log_text()[start:m.end()]
    # The worker survives and keeps serving.
    assert server.get("/").status == 200


def test_session_login_flow(server: GunicornServer) -> None:
    jar = CookieJar()
    form = {"Content-Type": "application/x-www-form-urlencoded"}

    assert server.get("/me").status == 401
    wrong = server.request("POST", "/login", headers=form,
                           body=urlencode({"username": "alice", "password": "nope"}).encode())
    assert wrong.status == 401
    assert not wrong.header_all("set-cookie")

    ok = server.request("POST", "/login", headers=form,
                        body=urlencode({"username": "alice", "password": "secret"}).encode())
    assert ok.status == 303
    assert ok.header("location", "").endswith("/me")
    morsels = jar.update(ok)
    assert "session" in morsels
    assert morsels["session"]["httponly"]

    # The session cookie keeps the user across requests (and across both workers).
    for _ in range(4):
        me = server.get("/me", headers=jar.headers())
        assert me.status == 200
        assert me.json() == {"user": "alice"}

    # A modified payload breaks the signature: no session.
    resp = server.get("/me", headers=[("Cookie", f"session=x{jar.cookies['session']}")])
    assert resp.status == 401

    out = server.request("POST", "/logout", headers=jar.headers())
    assert out.status == 200
    jar.update(out)
    assert "session" not in jar.cookies
    assert server.get("/me", headers=jar.headers()).status == 401


def test_cookies(server: GunicornServer) -> None:
    resp = server.get("/cookies/set?flavour=oatmeal&theme=dark")
    assert resp.status == 200
    jar = CookieJar()
    morsels = jar.update(resp)
    assert jar.cookies == {"flavour": "oatmeal", "theme": "dark"}
    assert morsels["theme"]["httponly"]
    assert morsels["theme"]["samesite"] == "Lax"
    back = server.get("/cookies", headers=jar.headers())
    assert back.json() == {"cookies": {"flavour": "oatmeal", "theme": "dark"}}


@pytest.mark.keepalive
def test_keepalive_mixed_requests(server: GunicornServer) -> None:
    """Framework responses of every kind, back to back on one connection."""
    ctype, body = multipart({}, {"file": ("a.bin", "application/octet-stream", b"x" * 5000)})
    with server.connect(timeout=30) as conn:
        assert conn.request("GET", "/").body == b"Hello from Flask!\n"
        big = conn.request("GET", "/files/big.bin")
        assert big.body == FILES["big.bin"] and big.keep_alive
        up = conn.request("POST", "/upload", headers={"Content-Type": ctype}, body=body)
        assert up.json()["size"] == 5000  # type: ignore[index]
        assert conn.request("GET", "/stream?chunks=5&size=10").body == expected_stream(5, 10)
        assert conn.request("GET", "/nope").status == 404
        assert conn.request("GET", "/boom").status == 500
        last = conn.request("GET", "/files/small.txt")
        assert last.body == FILES["small.txt"]
