"""gunicorn_fdpass.ASGIWorker over real HTTP and a real WebSocket client, with a real
Gunicorn: the Starlette example, the Django example's asgi.py and a plain ASGI test app
(tests/asgi_apps.py). What issue 12 item 7 lists: JSON, streaming, 10 MB uploads with and
without Content-Length, WebSocket echo, lifespan, the 500 page, a client leaving
mid-stream; and the scope fields Gunicorn's settings shape."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from websockets.sync.client import connect

from tests.support.server import GunicornServer
from tests.support.stats import wait_settled, wait_stats
from tests.support.wait import poll, read_text

pytestmark = pytest.mark.integration

ASGI = "gunicorn_fdpass.ASGIWorker"
TEN_MB = os.urandom(10 * 1024 * 1024)


@pytest.fixture(scope="module")
def starlette(module_server_factory: Callable[..., GunicornServer]) -> GunicornServer:
    return module_server_factory(app="examples.starlette_app:app", worker_class=ASGI,
                                 workers=2)


def _post(port: int, path: str, body: bytes | Iterator[bytes],
          chunked: bool = False) -> dict[str, object]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, body=body, encode_chunked=chunked,
                     headers={} if chunked else {"Content-Length": str(len(body))})  # type: ignore[arg-type]
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        return json.loads(resp.read())  # type: ignore[no-any-return]
    finally:
        conn.close()


def _pieces(data: bytes, size: int = 100_000) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


def test_starlette_json_and_lifespan_state(starlette: GunicornServer) -> None:
    resp = starlette.get("/")
    assert resp.status == 200 and resp.header("Content-Type") == "application/json"
    assert resp.json()["hello"] == "world"  # type: ignore[index]
    state = starlette.get("/state").json()
    assert state["greeting"] == "hello from lifespan"  # type: ignore[index]
    assert state["started_by"] == state["pid"]  # type: ignore[index]  # each worker's own


def test_starlette_streaming_response(starlette: GunicornServer) -> None:
    resp = starlette.get("/stream?chunks=4&delay=0.01")
    assert resp.status == 200 and resp.framing == "chunked"
    assert resp.body == b"".join(f"chunk {i}\n".encode() for i in range(4))


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_starlette_10_mb_upload(starlette: GunicornServer, chunked: bool) -> None:
    body = _pieces(TEN_MB) if chunked else TEN_MB
    got = _post(starlette.port, "/upload", body, chunked=chunked)
    assert got == {"length": len(TEN_MB), "sha256": hashlib.sha256(TEN_MB).hexdigest()}


def test_starlette_websocket_echo(starlette: GunicornServer) -> None:
    with connect(f"ws://127.0.0.1:{starlette.port}/ws", open_timeout=10) as ws:
        ws.send("hello")
        assert ws.recv(timeout=10) == "hello"
        ws.send(b"\x00\x01\x02")
        assert ws.recv(timeout=10) == b"\x00\x01\x02"
        ws.send(["frag", "mented"])
        assert ws.recv(timeout=10) == "fragmented"
        assert ws.ping().wait(10)


def test_starlette_error_is_a_logged_500_and_the_worker_goes_on(
        starlette: GunicornServer) -> None:
    resp = starlette.get("/error")
    assert resp.status == 500 and b"Internal Server Error" in resp.body
    starlette.wait_for_log("starlette-example-error")
    assert starlette.get("/").status == 200


def test_client_leaving_mid_stream_stops_the_app_and_frees_the_connection(
        make_server: Callable[..., GunicornServer], tmp_path: Path, stats_path: Path) -> None:
    srv = make_server(app="tests.asgi_apps:app", worker_class=ASGI, workers=1,
                      env={"FDPASS_STATS_FILE": str(stats_path)})
    marker = tmp_path / "stream.txt"
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(f"GET /forever?marker={marker} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        received = b""
        while len(received) < 20_000:
            received += sock.recv(65536)
        assert received.startswith(b"HTTP/1.1 200 OK")
    assert poll(lambda: read_text(marker)) == "stopped client-gone\n"
    wait_settled(stats_path)  # the worker said Done: nothing counts against it any more
    assert srv.get("/").status == 200
    assert "Error handling request" not in srv.log_text()


def test_scope_fields_root_path_forwarded_proto_and_access_log(
        make_server: Callable[..., GunicornServer], tmp_path: Path) -> None:
    access = tmp_path / "access.log"
    srv = make_server(app="tests.asgi_apps:app", worker_class=ASGI, workers=1,
                      args=["--root-path", "/mount", "--access-logfile", str(access),
                            "--forwarded-allow-ips", "127.0.0.1"])
    scope = srv.get("/scope?q=1", headers={"X-Forwarded-Proto": "https"}).json()
    assert scope["scheme"] == "https" and scope["root_path"] == "/mount"  # type: ignore[index]
    assert scope["path"] == "/scope" and scope["query_string"] == "q=1"  # type: ignore[index]
    assert scope["client"][0] == "127.0.0.1" and scope["http_version"] == "1.1"  # type: ignore[index]
    # Both addresses are those of the handed-over socket.
    assert scope["server"] == ["127.0.0.1", srv.port]  # type: ignore[index]
    assert isinstance(scope["client"][1], int)  # type: ignore[index]
    assert poll(lambda: access.exists() and '"GET /scope?q=1 HTTP/1.1" 200' in access.read_text())


def test_a_refused_request_gets_the_wsgi_workers_status(
        make_server: Callable[..., GunicornServer]) -> None:
    srv = make_server(app="tests.asgi_apps:app", worker_class=ASGI, workers=1)
    with srv.connect() as conn:
        conn.send(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1"
                  b"\r\n\r\n")
        assert conn.read_response().status == 400


def test_django_asgi_application(make_server: Callable[..., GunicornServer]) -> None:
    srv = make_server(app="examples.django_project.asgi:application", worker_class=ASGI,
                      workers=2,
                      env={"DJANGO_SETTINGS_MODULE": "examples.django_project.settings"})
    resp = srv.get("/")
    assert resp.status == 200 and resp.body == b"Hello from Django!\n"
    created = srv.request("POST", "/api/items/", body=json.dumps({"name": "x"}).encode(),
                          headers={"Content-Type": "application/json"})
    assert created.status == 201 and created.json()["name"] == "x"  # type: ignore[index]
    got = _post(srv.port, "/upload-raw/", TEN_MB)
    assert got["sha256"] == hashlib.sha256(TEN_MB).hexdigest()
    assert srv.get("/boom/").status == 500
    srv.wait_for_log("Internal Server Error: /boom/")
    # Django ignores lifespan; the worker says so and serves anyway.
    assert "ASGI lifespan is not supported" in srv.log_text()


def test_threads_are_warned_about_not_used(make_server: Callable[..., GunicornServer]) -> None:
    srv = make_server(app="tests.asgi_apps:app", worker_class=ASGI, workers=1, threads=4)
    assert srv.get("/").status == 200
    assert "does not use --threads (4)" in srv.log_text()


def test_entry_point_name(make_server: Callable[..., GunicornServer]) -> None:
    srv = make_server(app="tests.asgi_apps:app", worker_class="egg:gunicorn-fdpass#asgi",
                      workers=1)
    assert srv.get("/").status == 200


def test_asyncio_loop_serves_http_keep_alive_handback_and_websockets(
        make_server: Callable[..., GunicornServer], stats_path: Path) -> None:
    """The same worker on the standard asyncio loop (uvloop is what auto picks when it is
    installed, as in the other tests here)."""
    srv = make_server(app="tests.asgi_apps:app", worker_class=ASGI, workers=2,
                      args=["--asgi-loop", "asyncio", "--log-level", "debug"],
                      env={"FDPASS_ASGI_IDLE": "0.05", "FDPASS_STATS_FILE": str(stats_path)})
    assert srv.wait_for_log("Using the asyncio event loop")
    with srv.connect() as conn:
        first = conn.request("GET", "/pid", {"Host": "x"})
        # Idle past FDPASS_ASGI_IDLE: the connection goes back to the master (parked), and
        # its next request is served again.
        wait_stats(stats_path, lambda s: s["parked"] == 1 and s["busy"] == 0)
        second = conn.request("GET", "/pid", {"Host": "x"})
        assert first.status == second.status == 200 and second.keep_alive
    with connect(f"ws://127.0.0.1:{srv.port}/ws", open_timeout=10) as ws:
        ws.send("echo")
        assert ws.recv(timeout=10) == "echo"


def test_tls_is_served_with_the_https_scheme(make_server: Callable[..., GunicornServer],
                                             tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile, cafile = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    ca.cert_pem.write_to_path(str(cafile))
    srv = make_server(app="tests.asgi_apps:app", worker_class=ASGI, workers=1,
                      wait_ready=False, args=["--certfile", str(certfile),
                                              "--keyfile", str(keyfile)])
    srv.wait_for_workers(1)
    context = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(b"GET /scope HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"\r\nConnection: close" in head
    assert json.loads(body)["scheme"] == "https"


def test_a_client_done_with_its_connection_holds_no_place_in_the_worker(
        make_server: Callable[..., GunicornServer]) -> None:
    """One worker with room for one connection. A client that asked to close and got its
    answer, but keeps its socket open, is not waited for: the next client is served at once
    (before, the worker waited up to 2 s for the first client's EOF)."""
    srv = make_server(app="tests.asgi_apps:app", worker_class=ASGI, workers=1,
                      args=["--worker-connections", "1"])
    with srv.connect() as first:
        answer = first.request("GET", "/", {"Host": "x", "Connection": "close"})
        assert answer.status == 200 and answer.body == b"hello"
        assert first.sock.recv(1) == b""  # our FIN came with (or right after) the answer
        with srv.connect(timeout=1.0) as second:  # well under the old 2 s wait
            assert second.request("GET", "/", {"Host": "x"}).status == 200


def test_a_large_answer_to_a_slow_reader_arrives_whole_and_keep_alive_goes_on(
        make_server: Callable[..., GunicornServer]) -> None:
    """8 MiB to a client with a small receive buffer: the worker's first send cannot take
    it all, so the connection moves to the event loop mid-answer; the bytes arrive in order
    and the next request on the connection is served."""
    srv = make_server(app="tests.asgi_apps:app", worker_class=ASGI, workers=1)
    with srv.connect(timeout=30) as conn:
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        big = conn.request("GET", "/big?kib=8192", {"Host": "x"})
        assert big.status == 200 and big.body == bytes(range(256)) * (8192 * 4)
        again = conn.request("GET", "/pid", {"Host": "x"})
        assert again.status == 200 and again.header("X-Worker-Pid") == big.header(
            "X-Worker-Pid")
