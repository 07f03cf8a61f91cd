"""The Flask example (``examples/flask_app.py``) over real HTTP through a real Gunicorn.

One module-scoped server (2 workers) serves every test. The app is the example wrapped by
the transparent probe of :mod:`tests.support.frameworks` (``X-Probe-*`` response headers:
the ``wsgi.file_wrapper`` offered and the type of iterable returned).

:class:`TestFlask` runs every scenario of
:class:`~tests.support.frameworks.FrameworkScenarios` (index, JSON API, form post, uploads:
10 MB multipart, raw with Content-Length, chunked raw and chunked multipart; streaming and
not buffered, files through ``wsgi.file_wrapper``, HEAD of a file, 404, 500 logged,
cookies, keep-alive mix) plus the Flask-only tests below. Werkzeug honours
``wsgi.input_terminated``, so Flask reads a chunked upload to its end under any worker.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.support import frameworks as fw
from tests.support.server import GunicornServer

pytestmark = pytest.mark.integration


def probed_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    from examples.flask_app import app  # imported in the worker, on the first request
    return fw.probe(app, environ, start_response)


SITE = fw.ExampleSite(
    name="flask",
    app="tests.integration.test_frameworks_flask:probed_app",
    env={},
    slash="",
    hello=b"Hello from Flask!\n",
    index_headers={},
    files={"big.bin": fw.det_bytes(3 * fw.MB + 123, seed=1), "small.txt": b"small file\n" * 3},
    file_disposition="inline; filename={name}",  # Werkzeug quotes the name only if needed
    raw_upload_reports_content_length=False,
    error_page=b"Internal Server Error",
    boom="flask example boom",
    boom_logged=r"Exception on /boom \[GET\]",
)


@pytest.fixture(scope="module")
def server(module_server_factory: Callable[..., GunicornServer],
           tmp_path_factory: pytest.TempPathFactory) -> GunicornServer:
    return fw.start_example_server(module_server_factory, tmp_path_factory, SITE)


class TestFlask(fw.FrameworkScenarios):
    site = SITE

    def test_send_file_range_and_conditional(self, server: GunicornServer) -> None:
        data = SITE.files["big.bin"]
        part = server.get("/files/big.bin", headers={"Range": "bytes=1000-1999"})
        assert part.status == 206
        assert part.header("content-range") == f"bytes 1000-1999/{len(data)}"
        assert part.body == data[1000:2000]

        etag = server.get("/files/small.txt").header("etag")
        assert etag
        cached = server.get("/files/small.txt", headers={"If-None-Match": etag})
        assert cached.status == 304
        assert cached.body == b""

    def test_redirect(self, server: GunicornServer) -> None:
        resp = server.get("/old")
        assert resp.status == 302
        location = resp.header("location")
        assert location in ("/", server.url("/"), "http://127.0.0.1/")
        assert server.get("/").body == b"Hello from Flask!\n"

    def test_session_login_flow(self, server: GunicornServer) -> None:
        jar = fw.CookieJar()

        assert server.get("/me").status == 401
        wrong = server.request("POST", "/login", headers=fw.FORM,
                               body=urlencode({"username": "alice", "password": "nope"}).encode())
        assert wrong.status == 401
        assert not wrong.header_all("set-cookie")

        ok = server.request("POST", "/login", headers=fw.FORM,
                            body=urlencode({"username": "alice", "password": "secret"}).encode())
        assert ok.status == 303
        assert ok.header("location", "").endswith("/me")
        morsels = jar.update(ok)
        assert "session" in morsels
        assert morsels["session"]["httponly"]

        self.assert_logged_in(server, jar)

        # A modified payload breaks the signature: no session.
        resp = server.get("/me", headers=[("Cookie", f"session=x{jar.cookies['session']}")])
        assert resp.status == 401

        self.assert_logout(server, jar, "session")
