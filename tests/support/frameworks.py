"""What the framework integration tests share: the probe, upload helpers and the scenarios.

``tests/test_frameworks_flask.py`` and ``tests/test_frameworks_django.py`` each start one
module-scoped Gunicorn serving their example app (wrapped by :func:`probe`) and define a
``Test*`` class that inherits :class:`FrameworkScenarios`: every ``test_*`` method below runs
once per framework, against that module's ``server``. What the two apps do differently *over
HTTP* (routes, bodies, log lines, headers) is spelled out in an :class:`ExampleSite`, one per
framework module; what only one framework has (Django's CSRF, ``ALLOWED_HOSTS`` and 405
checks, Flask's Range/conditional ``send_file``, ...) stays as extra methods in that
framework's class.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import Any, ClassVar
from urllib.parse import urlencode

import pytest

from tests.conftest import attach_server
from tests.support.http import Response, build_request, chunked_body
from tests.support.server import GunicornServer, is_our_worker

MB = 1024 * 1024
OUR_FILE_WRAPPER = "gunicorn_fdpass.wsgi.FileWrapper"
UPLOAD_TIMEOUT = 60.0
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
# Every example site serves these two files from EXAMPLE_FILES_DIR (their contents differ).
FILE_NAMES = ("big.bin", "small.txt")


# -- probe (runs inside the gunicorn workers) -------------------------------------------------

def _qualname(obj: Any) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def probe(app: Callable[..., Iterable[bytes]], environ: dict[str, Any],
          start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Call ``app`` as a transparent middleware that reports, in ``X-Probe-*`` response
    headers, which ``wsgi.file_wrapper`` the server offered and what type of iterable the
    app returned.

    The app's start_response is delayed until it returned, to add the probe headers. The
    iterable is returned unchanged, so the server still sees its own file wrapper (and may
    ``sendfile()`` it). (Neither Flask nor Django uses ``write()``.)"""
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


# -- helpers ----------------------------------------------------------------------------------

def det_bytes(n: int, seed: int) -> bytes:
    """``n`` pseudo-random bytes, the same for the same ``seed``."""
    return random.Random(seed).randbytes(n)


def sha256(data: bytes) -> str:
    """Hex SHA-256 of ``data`` (what the example upload views report)."""
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


def expected_stream(chunks: int, size: int) -> bytes:
    """The body of the examples' ``/stream?chunks=N&size=S``."""
    return b"".join(f"chunk {i}\n".encode().ljust(size, b".") for i in range(chunks))


class CookieJar:
    """Just enough of a browser's cookie jar for one host."""

    def __init__(self) -> None:
        self.cookies: dict[str, str] = {}

    def update(self, resp: Response) -> SimpleCookie:
        """Apply ``resp``'s Set-Cookie headers (expired or emptied cookies are dropped);
        returns them parsed, for checking their attributes."""
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
        """The Cookie request header for what the jar holds (none when empty)."""
        if not self.cookies:
            return []
        return [("Cookie", "; ".join(f"{k}={v}" for k, v in self.cookies.items()))]


# -- the per-framework description and its server ----------------------------------------------

@dataclass(frozen=True)
class ExampleSite:
    """How one example app differs from the other, as seen over HTTP."""

    name: str
    """Short name (``"flask"``), for the files directory."""
    app: str
    """Gunicorn app spec of the probed example app."""
    env: dict[str, str]
    """Extra server environment (EXAMPLE_FILES_DIR is added by :func:`start_example_server`)."""
    slash: str
    """Appended to every route but ``/`` and ``/files/<name>``: ``"/"`` in Django's style."""
    hello: bytes
    """The body of ``GET /``."""
    index_headers: dict[str, str]
    """Headers ``GET /`` must carry, exactly, beyond its text/plain Content-Type."""
    files: dict[str, bytes]
    """Served at ``/files/<name>``; the keys are :data:`FILE_NAMES`."""
    file_disposition: str
    """Content-Disposition of ``/files/<name>`` (``{name}`` is filled in)."""
    raw_upload_reports_content_length: bool
    """Whether ``/upload-raw`` also answers with the CONTENT_LENGTH the app saw."""
    error_page: bytes
    """In the body of the 500 page."""
    boom: str
    """The RuntimeError message of ``/boom``: logged, never sent to the client."""
    boom_logged: str
    """Regex of the log line the framework writes for the ``/boom`` error."""

    def __post_init__(self) -> None:
        # The shared file tests are parametrised by FILE_NAMES, before any site is known.
        assert tuple(sorted(self.files)) == FILE_NAMES, self.files

    def route(self, path: str, query: str = "") -> str:
        """``path`` as this app spells it (with its trailing slash), plus ``?query``."""
        return path + self.slash + (f"?{query}" if query else "")


def start_example_server(factory: Callable[..., GunicornServer],
                         tmp_path_factory: pytest.TempPathFactory,
                         site: ExampleSite) -> GunicornServer:
    """Start ``site``'s app under Gunicorn (2 workers) with its files in a fresh directory.
    For a module-scoped ``server`` fixture: one server per framework, not per test."""
    files_dir = tmp_path_factory.mktemp(f"{site.name}-files")
    for name, data in site.files.items():
        (files_dir / name).write_bytes(data)
    return factory(app=site.app, workers=2, ready_timeout=30,
                   env={"EXAMPLE_FILES_DIR": str(files_dir), **site.env})


# -- the shared scenarios ---------------------------------------------------------------------

# Both apps get both payloads (each framework module used to have its own).
JSON_PAYLOADS = ({"name": "widget \u2603", "tags": ["a", "b"], "price": 12.5},
                 {"name": "gadget \u00e9", "tags": ["x"], "qty": 3})
BAD_JSON_BODIES = (b"{not json", b"[1, 2")


class FrameworkScenarios:
    """Scenarios every example app passes. Subclass it as ``Test<Framework>`` in a module
    that provides a module-scoped ``server`` fixture, and set :attr:`site`."""

    site: ClassVar[ExampleSite]

    @pytest.fixture(autouse=True)
    def _show_log_on_failure(self, request: pytest.FixtureRequest,
                             server: GunicornServer) -> None:
        attach_server(request, server)

    # -- helpers for the framework-specific session tests --

    def assert_logged_in(self, server: GunicornServer, jar: CookieJar) -> None:
        """The session cookie keeps the user across requests (and so across both workers)."""
        for _ in range(4):
            me = server.get(self.site.route("/me"), headers=jar.headers())
            assert me.status == 200
            assert me.json() == {"user": "alice"}

    def assert_logout(self, server: GunicornServer, jar: CookieJar, session_cookie: str,
                      headers: Sequence[tuple[str, str]] = ()) -> None:
        """``POST /logout`` (with ``headers`` added) drops the session cookie and the user."""
        out = server.request("POST", self.site.route("/logout"),
                             headers=[*jar.headers(), *headers])
        assert out.status == 200
        jar.update(out)
        assert session_cookie not in jar.cookies
        assert server.get(self.site.route("/me"), headers=jar.headers()).status == 401

    # -- tests --

    def test_index(self, server: GunicornServer) -> None:
        resp = server.get("/")
        assert resp.status == 200
        assert resp.body == self.site.hello
        assert resp.header("content-type", "").startswith("text/plain")
        for name, value in self.site.index_headers.items():
            assert resp.header(name) == value, name

    @pytest.mark.parametrize("payload", JSON_PAYLOADS, ids=["widget", "gadget"])
    def test_json_api(self, server: GunicornServer, payload: dict[str, Any]) -> None:
        path = self.site.route("/api/items")
        resp = server.request("POST", path, body=json.dumps(payload).encode(),
                              headers={"Content-Type": "application/json"})
        assert resp.status == 201, resp.text
        assert resp.header("content-type") == "application/json"
        item = resp.json()
        assert isinstance(item, dict)
        assert isinstance(item.pop("id"), int)
        assert item == payload

        for bad_body in BAD_JSON_BODIES:
            bad = server.request("POST", path, body=bad_body,
                                 headers={"Content-Type": "application/json"})
            assert bad.status == 400, bad_body
            assert bad.json() == {"error": "expected a JSON object with a string 'name'"}

        listing = server.get(path)
        assert listing.status == 200
        assert isinstance(listing.json(), dict)
        assert isinstance(listing.json()["items"], list)  # type: ignore[index]

    def test_form_post(self, server: GunicornServer) -> None:
        body = urlencode([("name", "Zo\u00eb & co"), ("tag", "x"), ("tag", "y=z"),
                          ("empty", "")]).encode()
        resp = server.request("POST", self.site.route("/form"), body=body, headers=FORM)
        assert resp.status == 200, resp.text
        assert resp.json() == {"fields": {"name": ["Zo\u00eb & co"], "tag": ["x", "y=z"],
                                          "empty": [""]}}

    def test_multipart_upload_10mb(self, server: GunicornServer) -> None:
        data = det_bytes(10 * MB, seed=10)
        ctype, body = multipart({"note": "ten megabytes"},
                                {"file": ("big upload.bin", "application/octet-stream", data)})
        resp = server.request("POST", self.site.route("/upload"), body=body,
                              headers={"Content-Type": ctype}, timeout=UPLOAD_TIMEOUT)
        assert resp.status == 200, resp.text
        assert resp.json() == {"filename": "big upload.bin",
                               "content_type": "application/octet-stream",
                               "size": len(data), "sha256": sha256(data),
                               "fields": {"note": "ten megabytes"}}

    def _raw_upload_answer(self, data: bytes) -> dict[str, Any]:
        """What ``/upload-raw`` must answer when it read all of ``data``."""
        expected: dict[str, Any] = {"size": len(data), "sha256": sha256(data)}
        if self.site.raw_upload_reports_content_length:
            expected["content_length"] = str(len(data))
        return expected

    def test_raw_upload_with_content_length(self, server: GunicornServer) -> None:
        """The control for the chunked test below: same view, same bytes, Content-Length."""
        data = det_bytes(3 * MB + 5, seed=30)
        resp = server.request("POST", self.site.route("/upload-raw"), body=data,
                              headers={"Content-Type": "application/octet-stream"},
                              timeout=UPLOAD_TIMEOUT)
        assert resp.status == 200, resp.text
        assert resp.json() == self._raw_upload_answer(data)

    def test_chunked_raw_upload(self, server: GunicornServer) -> None:
        """A chunked body reaches the app in full (see the framework module's docstring)."""
        data = det_bytes(3 * MB + 5, seed=30)
        resp = server.request("POST", self.site.route("/upload-raw"),
                              body=chunked_body(uneven_chunks(data, 30)),
                              headers={"Transfer-Encoding": "chunked",
                                       "Content-Type": "application/octet-stream"},
                              timeout=UPLOAD_TIMEOUT)
        assert resp.status == 200, resp.text
        got = resp.json()
        assert isinstance(got, dict)
        # Size and digest first, so a short read is reported as one.
        assert (got["size"], got["sha256"]) == (len(data), sha256(data)), (
            f"the app read {got['size']} of {len(data)} bytes of a chunked upload "
            f"(CONTENT_LENGTH seen by the app: {got.get('content_length')!r})")
        assert got == self._raw_upload_answer(data)

    def test_chunked_multipart_upload(self, server: GunicornServer) -> None:
        data = det_bytes(3 * MB, seed=21)
        ctype, body = multipart({"k": "v"}, {"file": ("c.bin", "application/octet-stream", data)})
        resp = server.request("POST", self.site.route("/upload"),
                              body=chunked_body(uneven_chunks(body, 21)),
                              headers={"Transfer-Encoding": "chunked", "Content-Type": ctype},
                              timeout=UPLOAD_TIMEOUT)
        assert resp.status == 200, f"{resp.status} {resp.text[:300]}"
        got = resp.json()
        assert isinstance(got, dict)
        assert (got["size"], got["sha256"], got["fields"]) == (len(data), sha256(data), {"k": "v"})

    def test_streaming_response(self, server: GunicornServer) -> None:
        resp = server.get(self.site.route("/stream", "chunks=200&size=1000"))
        assert resp.status == 200
        assert resp.framing == "chunked"
        assert not resp.has_header("content-length")
        assert resp.body == expected_stream(200, 1000)

    def test_streaming_response_is_not_buffered(self, server: GunicornServer) -> None:
        """The head and first chunk arrive while the generator is still sleeping."""
        pause = 1.0
        with server.connect() as conn:
            conn.send(build_request("GET", self.site.route(
                "/stream", f"chunks=3&size=16&pause={pause}")))
            head = conn.read_head(timeout=10)
            t_head = time.monotonic()
            assert head is not None and head.status == 200
            conn._read_body(head, "GET", time.monotonic() + 10)
            t_done = time.monotonic()
        assert head.body == expected_stream(3, 16)
        # If the server buffered the whole response, head and body would arrive together.
        assert t_done - t_head >= pause * 0.7, (t_head, t_done)

    @pytest.mark.parametrize("name", FILE_NAMES)
    def test_file_through_file_wrapper(self, server: GunicornServer, name: str) -> None:
        resp = server.get(f"/files/{name}", timeout=30)
        assert resp.status == 200
        assert resp.header("content-length") == str(len(self.site.files[name]))
        assert resp.header("content-disposition") == self.site.file_disposition.format(name=name)
        assert resp.body == self.site.files[name]
        offered = resp.header("x-probe-file-wrapper")
        # Flask's send_file / Django's WSGIHandler handed the open file to
        # environ["wsgi.file_wrapper"], and the app's iterable reaching the server is that
        # wrapper itself.
        assert resp.header("x-probe-iterable") == offered
        if is_our_worker(server.worker_class):
            assert offered == OUR_FILE_WRAPPER

    def test_head_of_file(self, server: GunicornServer) -> None:
        resp = server.request("HEAD", "/files/big.bin")
        assert resp.status == 200
        assert resp.header("content-length") == str(len(self.site.files["big.bin"]))
        assert resp.body == b""

    def test_404_page(self, server: GunicornServer) -> None:
        for target in (self.site.route("/no/such/page"), "/files/missing.bin"):
            resp = server.get(target)
            assert resp.status == 404, target
            assert resp.header("content-type", "").startswith("text/html")
            assert b"Not Found" in resp.body
            assert b"no such file" not in resp.body  # no details (Django: DEBUG = False)

    def test_500_page_and_logged(self, server: GunicornServer) -> None:
        start = server.log_size()
        resp = server.get(self.site.route("/boom"))
        assert resp.status == 500
        assert self.site.error_page in resp.body
        assert self.site.boom.encode() not in resp.body  # no traceback leaks to the client
        server.wait_for_log(self.site.boom_logged, timeout=5, start=start)
        m = server.wait_for_log(f"RuntimeError: {self.site.boom}", timeout=5, start=start)
        assert "Traceback (most recent call last)" in server.log_text()[start:m.end()]
        # The worker survives and keeps serving.
        assert server.get("/").status == 200

    def test_cookies(self, server: GunicornServer) -> None:
        resp = server.get(self.site.route("/cookies/set", "flavour=oatmeal&theme=dark"))
        assert resp.status == 200
        jar = CookieJar()
        morsels = jar.update(resp)
        assert jar.cookies == {"flavour": "oatmeal", "theme": "dark"}
        for name in ("flavour", "theme"):
            assert morsels[name]["httponly"], name
            assert morsels[name]["samesite"] == "Lax", name
        back = server.get(self.site.route("/cookies"), headers=jar.headers())
        assert back.json() == {"cookies": {"flavour": "oatmeal", "theme": "dark"}}

    @pytest.mark.keepalive
    def test_keepalive_mixed_requests(self, server: GunicornServer) -> None:
        """Framework responses of every kind, back to back on one connection."""
        site = self.site
        ctype, body = multipart({}, {"file": ("a.bin", "application/octet-stream", b"x" * 5000)})
        with server.connect(timeout=30) as conn:
            assert conn.request("GET", "/").body == site.hello
            big = conn.request("GET", "/files/big.bin")
            assert big.body == site.files["big.bin"] and big.keep_alive
            up = conn.request("POST", site.route("/upload"), headers={"Content-Type": ctype},
                              body=body)
            assert up.json()["size"] == 5000  # type: ignore[index]
            stream = conn.request("GET", site.route("/stream", "chunks=5&size=10"))
            assert stream.body == expected_stream(5, 10)
            assert conn.request("GET", site.route("/nope")).status == 404
            assert conn.request("GET", site.route("/boom")).status == 500
            assert conn.request("GET", "/files/small.txt").body == site.files["small.txt"]
