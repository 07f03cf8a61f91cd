"""Replay the raw-request corpus (tests/corpus/*.http, expectations in expected.json).

Each request goes over a real TCP socket, twice: once straight into serve_connection (fast,
every case), and once against a real Gunicorn master started with the test harness (one server
for the whole corpus; with ``FDPASS_TEST_WORKER_CLASS=sync`` the same corpus checks that
Gunicorn's own worker agrees, except for the cases marked ``ours_only``). Refused requests must
never reach the application: the corpus app counts its calls.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gunicorn_fdpass.worker.connection import serve_connection
from tests import apps
from tests.support.serve import FakeHooks, FakeLog, make_config
from tests.support.server import GunicornServer, is_our_worker, worker_class_under_test

CORPUS = Path(__file__).parent / "corpus"
EXPECTED: dict[str, dict[str, Any]] = json.loads((CORPUS / "expected.json").read_text())
NAMES = sorted(EXPECTED)


def test_corpus_is_complete() -> None:
    files = sorted(p.name for p in CORPUS.glob("*.http"))
    assert files == NAMES
    assert len(files) >= 100
    statuses = {e["status"] for e in EXPECTED.values()}
    assert {200, 400, 414, 417, 431, 501} <= statuses


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """The first final response in ``raw`` (interim 1xx responses skipped)."""
    while True:
        head, sep, rest = raw.partition(b"\r\n\r\n")
        assert sep, f"no complete response head in {raw[:200]!r}"
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if status >= 200:
            break
        raw = rest
    if "content-length" in headers:
        return status, headers, rest[: int(headers["content-length"])]
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = bytearray()
        while True:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                return status, headers, bytes(body)
            body += rest[:size]
            rest = rest[size + 2 :]
    return status, headers, rest


def exchange(port: int, raw: bytes, timeout: float = 5.0) -> bytes:
    """Send ``raw``, end our side, and read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        sock.shutdown(socket.SHUT_WR)
        received = bytearray()
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            received += data
    return bytes(received)


def check(name: str, raw_response: bytes, calls: int | None) -> None:
    expected = EXPECTED[name]
    status, _headers, body = parse_response(raw_response)
    assert status == expected["status"], f"{name}: {raw_response[:300]!r}"
    if status >= 400 and status != 404 and calls is not None:
        assert calls == 0, f"{name}: a refused request reached the application"
    if "environ" in expected or "absent" in expected:
        environ = json.loads(body)
        for key, value in expected.get("environ", {}).items():
            if key == "wsgi.url_scheme":
                assert environ[key] == value, name
            else:
                assert environ.get(key) == value, f"{name}: {key}={environ.get(key)!r}"
        for key in expected.get("absent", []):
            assert key not in environ, f"{name}: {key} should be absent"


# ---------------------------------------------------------------- in process, every case


class CountingApp:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]
                 ) -> Iterable[bytes]:
        self.calls += 1
        return apps.app(environ, start_response)


@pytest.fixture(scope="module")
def tcp_listener() -> Iterator[socket.socket]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    yield listener
    listener.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", NAMES)
def test_corpus_in_process(name: str, tcp_listener: socket.socket) -> None:
    raw = (CORPUS / name).read_bytes()
    app = CountingApp()
    result: dict[str, bytes] = {}
    port = tcp_listener.getsockname()[1]
    client = threading.Thread(target=lambda: result.update(out=exchange(port, raw)))
    client.start()
    conn, _ = tcp_listener.accept()
    try:
        serve_connection(conn, b"", app, make_config(), FakeHooks(), FakeLog())
    finally:
        conn.close()
    client.join(10)
    assert not client.is_alive()
    check(name, result["out"], app.calls)


# ---------------------------------------------------------- one real server, every case


@pytest.fixture(scope="module")
def corpus_server(module_server_factory: Callable[..., GunicornServer]) -> GunicornServer:
    return module_server_factory(workers=2)


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_corpus_against_real_server(corpus_server: GunicornServer) -> None:
    ours = is_our_worker(worker_class_under_test())
    failures = []
    for name in NAMES:
        if EXPECTED[name].get("ours_only") and not ours:
            continue
        raw = (CORPUS / name).read_bytes()
        try:
            check(name, exchange(corpus_server.port, raw), None)
        except AssertionError as exc:
            failures.append(f"{name}: {exc}")
    assert not failures, "\n".join(failures)
