"""The Django example (``examples/django_project``) over real HTTP through a real Gunicorn.

One module-scoped server (2 workers) serves every test; the app is the project's
``wsgi.application`` wrapped by the same transparent probe as the Flask tests (``X-Probe-*``
headers: the ``wsgi.file_wrapper`` offered and the type of iterable returned).

Django bounds ``wsgi.input`` by ``CONTENT_LENGTH`` (0 when absent) and ignores
``wsgi.input_terminated``, so under Gunicorn's own workers it reads 0 bytes of a chunked
upload. The chunked tests below require the worker to deliver such bodies to Django in
full; they are expected to fail under ``-k sync``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.conftest import attach_server
from tests.support.http import build_request, chunked_body
from tests.support.server import GunicornServer, is_our_worker

# Helpers shared with the Flask module (only helpers: no tests or fixtures are imported).
from tests.test_frameworks_flask import (
    MB,
    OUR_FILE_WRAPPER,
    UPLOAD_TIMEOUT,
    CookieJar,
    det_bytes,
    expected_stream,
    multipart,
    probe,
    sha256,
    uneven_chunks,
)

pytestmark = pytest.mark.integration


def probed_application(environ: dict[str, Any],
                       start_response: Callable[..., Any]) -> Iterable[bytes]:
    from examples.django_project.wsgi import application  # imported in the worker
    return probe(application, environ, start_response)


FILES = {"big.bin": det_bytes(3 * MB + 321, seed=2), "small.txt": b"small django file\n" * 2}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture(scope="module")
def server(module_server_factory: Callable[..., GunicornServer],
           tmp_path_factory: pytest.TempPathFactory) -> GunicornServer:
    files_dir = tmp_path_factory.mktemp("django-files")
    for name, data in FILES.items():
        (files_dir / name).write_bytes(data)
    return module_server_factory(
        app="tests.test_frameworks_django:probed_application", workers=2, ready_timeout=30,
        env={"EXAMPLE_FILES_DIR": str(files_dir),
             "DJANGO_SETTINGS_MODULE": "examples.django_project.settings"})


@pytest.fixture(autouse=True)
def _show_log_on_failure(request: pytest.FixtureRequest, server: GunicornServer) -> None:
    attach_server(request, server)


def test_index(server: GunicornServer) -> None:
    resp = server.get("/")
    assert resp.status == 200
    assert resp.body == b"Hello from Django!\n"
    assert resp.header("x-frame-options") == "DENY"  # the middleware stack ran


def test_disallowed_host(server: GunicornServer) -> None:
    resp = server.get("/", headers={"Host": "evil.example"})
    assert resp.status == 400
    assert server.get("/", headers={"Host": "localhost:8000"}).status == 200


def test_json_api(server: GunicornServer) -> None:
    payload = {"name": "gadget \u00e9", "tags": ["x"], "qty": 3}
    resp = server.request("POST", "/api/items/", body=json.dumps(payload).encode(),
                          headers={"Content-Type": "application/json"})
    assert resp.status == 201, resp.text
    assert resp.header("content-type") == "application/json"
    item = resp.json()
    assert isinstance(item, dict)
    assert isinstance(item.pop("id"), int)
    assert item == payload

    bad = server.request("POST", "/api/items/", body=b"[1, 2",
                         headers={"Content-Type": "application/json"})
    assert bad.status == 400
    assert bad.json() == {"error": "expected a JSON object with a string 'name'"}

    listing = server.get("/api/items/")
    assert listing.status == 200
    assert isinstance(listing.json()["items"], list)  # type: ignore[index]


def test_form_post(server: GunicornServer) -> None:
    body = urlencode([("name", "Zo\u00eb & co"), ("tag", "x"), ("tag", "y=z"),
                      ("empty", "")]).encode()
    resp = server.request("POST", "/form/", body=body, headers=FORM)
    assert resp.status == 200, resp.text
    assert resp.json() == {"fields": {"name": ["Zo\u00eb & co"], "tag": ["x", "y=z"],
                                      "empty": [""]}}


def test_multipart_upload_10mb(server: GunicornServer) -> None:
    data = det_bytes(10 * MB, seed=11)
    ctype, body = multipart({"note": "ten megabytes"},
                            {"file": ("big upload.bin", "application/octet-stream", data)})
    resp = server.request("POST", "/upload/", body=body, headers={"Content-Type": ctype},
                          timeout=UPLOAD_TIMEOUT)
    assert resp.status == 200, resp.text
    assert resp.json() == {"filename": "big upload.bin", "content_type": "application/octet-stream",
                           "size": len(data), "sha256": sha256(data),
                           "fields": {"note": "ten megabytes"}}


def test_raw_upload_with_content_length(server: GunicornServer) -> None:
    """The control for the chunked test below: same view, same bytes, Content-Length."""
    data = det_bytes(3 * MB + 5, seed=30)
    resp = server.request("POST", "/upload-raw/", body=data,
                          headers={"Content-Type": "application/octet-stream"},
                          timeout=UPLOAD_TIMEOUT)
    assert resp.status == 200, resp.text
    assert resp.json() == {"size": len(data), "sha256": sha256(data),
                           "content_length": str(len(data))}


def test_chunked_raw_upload_reaches_django(server: GunicornServer) -> None:
    """A chunked body must reach Django in full (Django reads only CONTENT_LENGTH bytes)."""
    data = det_bytes(3 * MB + 5, seed=30)
    resp = server.request("POST", "/upload-raw/", body=chunked_body(uneven_chunks(data, 30)),
                          headers={"Transfer-Encoding": "chunked",
                                   "Content-Type": "application/octet-stream"},
                          timeout=UPLOAD_TIMEOUT)
    assert resp.status == 200, resp.text
    got = resp.json()
    assert isinstance(got, dict)
    assert (got["size"], got["sha256"]) == (len(data), sha256(data)), (
        f"Django read {got['size']} of {len(data)} bytes of a chunked upload "
        f"(CONTENT_LENGTH seen by Django: {got['content_length']!r})")
    assert got["content_length"] == str(len(data))


def test_chunked_multipart_upload_reaches_django(server: GunicornServer) -> None:
    data = det_bytes(3 * MB, seed=31)
    ctype, body = multipart({"k": "v"}, {"file": ("c.bin", "application/octet-stream", data)})
    resp = server.request("POST", "/upload/", body=chunked_body(uneven_chunks(body, 31)),
                          headers={"Transfer-Encoding": "chunked", "Content-Type": ctype},
                          timeout=UPLOAD_TIMEOUT)
    assert resp.status == 200, f"{resp.status} {resp.text[:300]}"
    got = resp.json()
    assert isinstance(got, dict)
    assert (got["size"], got["sha256"], got["fields"]) == (len(data), sha256(data), {"k": "v"})


def test_streaming_response(server: GunicornServer) -> None:
    resp = server.get("/stream/?chunks=200&size=1000")
    assert resp.status == 200
    assert resp.framing == "chunked"
    assert not resp.has_header("content-length")
    assert resp.body == expected_stream(200, 1000)


def test_streaming_response_is_not_buffered(server: GunicornServer) -> None:
    pause = 1.0
    with server.connect() as conn:
        conn.send(build_request("GET", f"/stream/?chunks=3&size=16&pause={pause}"))
        head = conn.read_head(timeout=10)
        t_head = time.monotonic()
        assert head is not None and head.status == 200
        conn._read_body(head, "GET", time.monotonic() + 10)
        t_done = time.monotonic()
    assert head.body == expected_stream(3, 16)
    assert t_done - t_head >= pause * 0.7, (t_head, t_done)


@pytest.mark.parametrize("name", sorted(FILES))
def test_file_response_through_file_wrapper(server: GunicornServer, name: str) -> None:
    resp = server.get(f"/files/{name}", timeout=30)
    assert resp.status == 200
    assert resp.header("content-length") == str(len(FILES[name]))
    assert resp.header("content-disposition") == f'inline; filename="{name}"'
    assert resp.body == FILES[name]
    offered = resp.header("x-probe-file-wrapper")
    # Django's WSGIHandler returned environ["wsgi.file_wrapper"](file) to the server.
    assert resp.header("x-probe-iterable") == offered
    if is_our_worker(server.worker_class):
        assert offered == OUR_FILE_WRAPPER


def test_head_of_file(server: GunicornServer) -> None:
    resp = server.request("HEAD", "/files/big.bin")
    assert resp.status == 200
    assert resp.header("content-length") == str(len(FILES["big.bin"]))
    assert resp.body == b""


def test_redirects(server: GunicornServer) -> None:
    resp = server.get("/old/")
    assert resp.status == 302
    assert resp.header("location") == "/"
    # CommonMiddleware's APPEND_SLASH.
    slash = server.get("/api/items?x=1")
    assert slash.status == 301
    assert slash.header("location") == "/api/items/?x=1"


def test_404_page(server: GunicornServer) -> None:
    for target in ("/no/such/page/", "/files/missing.bin"):
        resp = server.get(target)
        assert resp.status == 404, target
        assert resp.header("content-type", "").startswith("text/html")
        assert b"Not Found" in resp.body
        assert b"no such file" not in resp.body  # DEBUG = False: no details


def test_405(server: GunicornServer) -> None:
    resp = server.request("OPTIONS", "/me/")  # CSRF-safe method, so the view answers
    assert resp.status == 405
    assert resp.header("allow") == "GET, HEAD"


def test_500_page_and_logged(server: GunicornServer) -> None:
    start = server.log_size()
    resp = server.get("/boom/")
    assert resp.status == 500
    assert b"Server Error (500)" in resp.body
    assert b"django example boom" not in resp.body
    server.wait_for_log(r"Internal Server Error: /boom/", timeout=5, start=start)
    m = server.wait_for_log(r"RuntimeError: django example boom", timeout=5, start=start)
    assert "Traceback (most recent call last)" in server.log_text()[start:m.end()]
    assert server.get("/").status == 200


def _csrf_form_token(html: str) -> str:
    m = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    assert m, html
    return m.group(1)


def test_session_login_flow_with_csrf(server: GunicornServer) -> None:
    jar = CookieJar()
    assert server.get("/me/").status == 401

    page = server.get("/login/")
    assert page.status == 200
    jar.update(page)
    assert "csrftoken" in jar.cookies
    token = _csrf_form_token(page.text)
    creds = {"username": "alice", "password": "secret"}

    # No CSRF cookie / no token: refused by CsrfViewMiddleware.
    no_cookie = server.request("POST", "/login/", headers=FORM,
                               body=urlencode({**creds, "csrfmiddlewaretoken": token}).encode())
    assert no_cookie.status == 403
    no_token = server.request("POST", "/login/", headers=[*FORM.items(), *jar.headers()],
                              body=urlencode(creds).encode())
    assert no_token.status == 403

    wrong = server.request("POST", "/login/", headers=[*FORM.items(), *jar.headers()],
                           body=urlencode({"username": "alice", "password": "x",
                                           "csrfmiddlewaretoken": token}).encode())
    assert wrong.status == 401

    ok = server.request("POST", "/login/", headers=[*FORM.items(), *jar.headers()],
                        body=urlencode({**creds, "csrfmiddlewaretoken": token}).encode())
    assert ok.status == 302, ok.text
    assert ok.header("location") == "/me/"
    morsels = jar.update(ok)
    assert "sessionid" in morsels
    assert morsels["sessionid"]["httponly"]

    for _ in range(4):  # across requests (and both workers): the session is in the cookie
        me = server.get("/me/", headers=jar.headers())
        assert me.status == 200
        assert me.json() == {"user": "alice"}

    forged = dict(jar.cookies, sessionid="x" + jar.cookies["sessionid"])  # bad signature
    cookie = "; ".join(f"{k}={v}" for k, v in forged.items())
    assert server.get("/me/", headers=[("Cookie", cookie)]).status == 401

    assert server.request("POST", "/logout/", headers=jar.headers()).status == 403
    out = server.request("POST", "/logout/",
                         headers=[*jar.headers(), ("X-CSRFToken", jar.cookies["csrftoken"])])
    assert out.status == 200
    jar.update(out)
    assert "sessionid" not in jar.cookies
    assert server.get("/me/", headers=jar.headers()).status == 401


def test_cookies(server: GunicornServer) -> None:
    resp = server.get("/cookies/set/?flavour=oatmeal&theme=dark")
    assert resp.status == 200
    jar = CookieJar()
    morsels = jar.update(resp)
    assert jar.cookies == {"flavour": "oatmeal", "theme": "dark"}
    assert morsels["flavour"]["httponly"]
    assert morsels["flavour"]["samesite"] == "Lax"
    back = server.get("/cookies/", headers=jar.headers())
    assert back.json() == {"cookies": {"flavour": "oatmeal", "theme": "dark"}}


@pytest.mark.keepalive
def test_keepalive_mixed_requests(server: GunicornServer) -> None:
    ctype, body = multipart({}, {"file": ("a.bin", "application/octet-stream", b"y" * 5000)})
    with server.connect(timeout=30) as conn:
        assert conn.request("GET", "/").body == b"Hello from Django!\n"
        big = conn.request("GET", "/files/big.bin")
        assert big.body == FILES["big.bin"] and big.keep_alive
        up = conn.request("POST", "/upload/", headers={"Content-Type": ctype}, body=body)
        assert up.json()["size"] == 5000  # type: ignore[index]
        assert conn.request("GET", "/stream/?chunks=5&size=10").body == expected_stream(5, 10)
        assert conn.request("GET", "/nope/").status == 404
        assert conn.request("GET", "/boom/").status == 500
        assert conn.request("GET", "/files/small.txt").body == FILES["small.txt"]
