"""The Django example (``examples/django_project``) over real HTTP through a real Gunicorn.

One module-scoped server (2 workers) serves every test; the app is the project's
``wsgi.application`` wrapped by the transparent probe of :mod:`tests.support.frameworks`
(``X-Probe-*`` headers: the ``wsgi.file_wrapper`` offered and the type of iterable returned).

:class:`TestDjango` runs every scenario of
:class:`~tests.support.frameworks.FrameworkScenarios` (index, JSON API, form post, uploads:
10 MB multipart, raw with Content-Length, chunked raw and chunked multipart; streaming and
not buffered, files through ``wsgi.file_wrapper``, HEAD of a file, 404, 500 logged,
cookies, keep-alive mix) plus the Django-only tests below (ALLOWED_HOSTS, redirects with
APPEND_SLASH, 405, the CSRF-checked login flow).

Django bounds ``wsgi.input`` by ``CONTENT_LENGTH`` (0 when absent) and ignores
``wsgi.input_terminated``, so under Gunicorn's own workers it reads 0 bytes of a chunked
upload. The chunked upload scenarios require the worker to deliver such bodies to Django in
full; they are expected to fail here under ``-k sync``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.support import frameworks as fw
from tests.support.server import GunicornServer

pytestmark = pytest.mark.integration


def probed_application(environ: dict[str, Any],
                       start_response: Callable[..., Any]) -> Iterable[bytes]:
    from examples.django_project.wsgi import application  # imported in the worker
    return fw.probe(application, environ, start_response)


SITE = fw.ExampleSite(
    name="django",
    app="tests.integration.test_frameworks_django:probed_application",
    env={"DJANGO_SETTINGS_MODULE": "examples.django_project.settings"},
    slash="/",
    hello=b"Hello from Django!\n",
    index_headers={"x-frame-options": "DENY"},  # the middleware stack ran
    files={"big.bin": fw.det_bytes(3 * fw.MB + 321, seed=2),
           "small.txt": b"small django file\n" * 2},
    file_disposition='inline; filename="{name}"',
    raw_upload_reports_content_length=True,
    error_page=b"Server Error (500)",
    boom="django example boom",
    boom_logged=r"Internal Server Error: /boom/",
)


@pytest.fixture(scope="module")
def server(module_server_factory: Callable[..., GunicornServer],
           tmp_path_factory: pytest.TempPathFactory) -> GunicornServer:
    return fw.start_example_server(module_server_factory, tmp_path_factory, SITE)


def _csrf_form_token(html: str) -> str:
    m = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    assert m, html
    return m.group(1)


class TestDjango(fw.FrameworkScenarios):
    site = SITE

    def test_disallowed_host(self, server: GunicornServer) -> None:
        resp = server.get("/", headers={"Host": "evil.example"})
        assert resp.status == 400
        assert server.get("/", headers={"Host": "localhost:8000"}).status == 200

    def test_redirects(self, server: GunicornServer) -> None:
        resp = server.get("/old/")
        assert resp.status == 302
        assert resp.header("location") == "/"
        # CommonMiddleware's APPEND_SLASH.
        slash = server.get("/api/items?x=1")
        assert slash.status == 301
        assert slash.header("location") == "/api/items/?x=1"

    def test_405(self, server: GunicornServer) -> None:
        resp = server.request("OPTIONS", "/me/")  # CSRF-safe method, so the view answers
        assert resp.status == 405
        assert resp.header("allow") == "GET, HEAD"

    def test_session_login_flow_with_csrf(self, server: GunicornServer) -> None:
        jar = fw.CookieJar()
        assert server.get("/me/").status == 401

        page = server.get("/login/")
        assert page.status == 200
        jar.update(page)
        assert "csrftoken" in jar.cookies
        token = _csrf_form_token(page.text)
        creds = {"username": "alice", "password": "secret"}

        # No CSRF cookie / no token: refused by CsrfViewMiddleware.
        no_cookie = server.request("POST", "/login/", headers=fw.FORM,
                                   body=urlencode({**creds, "csrfmiddlewaretoken": token}).encode())
        assert no_cookie.status == 403
        no_token = server.request("POST", "/login/",
                                  headers=[*fw.FORM.items(), *jar.headers()],
                                  body=urlencode(creds).encode())
        assert no_token.status == 403

        wrong = server.request("POST", "/login/", headers=[*fw.FORM.items(), *jar.headers()],
                               body=urlencode({"username": "alice", "password": "x",
                                               "csrfmiddlewaretoken": token}).encode())
        assert wrong.status == 401

        ok = server.request("POST", "/login/", headers=[*fw.FORM.items(), *jar.headers()],
                            body=urlencode({**creds, "csrfmiddlewaretoken": token}).encode())
        assert ok.status == 302, ok.text
        assert ok.header("location") == "/me/"
        morsels = jar.update(ok)
        assert "sessionid" in morsels
        assert morsels["sessionid"]["httponly"]

        self.assert_logged_in(server, jar)

        forged = dict(jar.cookies, sessionid="x" + jar.cookies["sessionid"])  # bad signature
        cookie = "; ".join(f"{k}={v}" for k, v in forged.items())
        assert server.get("/me/", headers=[("Cookie", cookie)]).status == 401

        assert server.request("POST", "/logout/", headers=jar.headers()).status == 403
        self.assert_logout(server, jar, "sessionid",
                           headers=[("X-CSRFToken", jar.cookies["csrftoken"])])
