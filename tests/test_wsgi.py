"""Unit tests of the pure PEP 3333 adapter in gunicorn_fdpass.wsgi."""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gunicorn_fdpass import wsgi
from gunicorn_fdpass.http.request_head import parse_head
from gunicorn_fdpass.http.request_rules import ParsedRequest, RequestRules
from gunicorn_fdpass.wsgi import (
    FileWrapper,
    InputStream,
    ResponseStarter,
    build_environ,
    split_target,
    validate_headers,
    validate_status,
)


def request(
    target: str | bytes,
    headers: list[tuple[Any, Any]] | None = None,
    method: str = "GET",
    version: str = "1.1",
) -> ParsedRequest:
    """The request as the connection layer hands it over: parsed by request_head."""
    if headers is None:
        headers = [("Host", "example.com")]

    def raw(value: str | bytes) -> bytes:
        return value if isinstance(value, bytes) else value.encode("latin-1")

    head = b"%s %s HTTP/%s\r\n" % (raw(method), raw(target), raw(version))
    head += b"".join(b"%s: %s\r\n" % (raw(n), raw(v)) for n, v in headers) + b"\r\n"
    return parse_head(head, RequestRules(), trusted=False)


def environ_for(req: ParsedRequest, **kwargs: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "server": ("10.0.0.1", 8000),
        "client": ("192.0.2.7", 51234),
        "url_scheme": "http",
        "script_name": "",
        "wsgi_input": io.BytesIO(),
        "wsgi_errors": sys.stderr,
        "multithread": False,
    }
    params.update(kwargs)
    return build_environ(req, **params)


# ----------------------------------------------------------------------------- environ


def test_environ_basics() -> None:
    wsgi_input = io.BytesIO(b"")
    env = environ_for(request("/path/x?a=1&b=%20", method="POST"), wsgi_input=wsgi_input)
    assert env["REQUEST_METHOD"] == "POST"
    assert env["SCRIPT_NAME"] == ""
    assert env["PATH_INFO"] == "/path/x"
    assert env["QUERY_STRING"] == "a=1&b=%20"  # not decoded
    assert env["RAW_URI"] == "/path/x?a=1&b=%20"
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["SERVER_NAME"] == "example.com" and env["SERVER_PORT"] == "80"
    assert env["REMOTE_ADDR"] == "192.0.2.7" and env["REMOTE_PORT"] == "51234"
    assert env["HTTP_HOST"] == "example.com"
    assert env["wsgi.version"] == (1, 0)
    assert env["wsgi.url_scheme"] == "http"
    assert env["wsgi.input"] is wsgi_input
    assert env["wsgi.errors"] is sys.stderr
    assert env["wsgi.multithread"] is False
    assert env["wsgi.multiprocess"] is True
    assert env["wsgi.run_once"] is False
    assert env["wsgi.file_wrapper"] is FileWrapper
    assert env["wsgi.input_terminated"] is True
    assert "CONTENT_LENGTH" not in env and "CONTENT_TYPE" not in env
    # PEP 3333: every str value is a native string
    assert all(isinstance(v, str) for k, v in env.items() if not k.startswith("wsgi."))


@pytest.mark.parametrize(
    ("target", "path_info"),
    [
        ("/caf%C3%A9", "/caf\xc3\xa9"),  # UTF-8 bytes, each mapped to one latin-1 code point
        ("/a%2Fb", "/a/b"),
        ("/sp%20ace/%7e", "/sp ace/~"),
        ("/%ff", "/\xff"),
        ("/bad%zz", "/bad%zz"),
    ],
)
def test_path_info_is_percent_decoded_latin1(target: str, path_info: str) -> None:
    env = environ_for(request(target))
    assert env["PATH_INFO"] == path_info
    assert env["RAW_URI"] == target


@pytest.mark.parametrize(
    ("script_name", "target", "expected_script", "expected_path"),
    [
        ("/app", "/app/x/y", "/app", "/x/y"),
        ("/app/", "/app/x", "/app", "/x"),
        ("/app", "/app", "/app", ""),
        ("/app", "/application", "/app", "/application"),
        ("/app", "/other", "/app", "/other"),
        ("/caf\xc3\xa9", "/caf%C3%A9/x", "/caf\xc3\xa9", "/x"),
    ],
)
def test_script_name(
    script_name: str, target: str, expected_script: str, expected_path: str
) -> None:
    env = environ_for(request(target), script_name=script_name)
    assert env["SCRIPT_NAME"] == expected_script
    assert env["PATH_INFO"] == expected_path


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        ("http://example.com/p/q?x=1", "/p/q", "x=1"),
        ("http://example.com:8080", "/", ""),
        ("https://example.com?x=2", "/", "x=2"),
        ("http://user@h/a%20b", "/a b", ""),
    ],
)
def test_absolute_form_target(target: str, path: str, query: str) -> None:
    env = environ_for(request(target))
    assert (env["PATH_INFO"], env["QUERY_STRING"]) == (path, query)
    assert env["RAW_URI"] == target


def test_split_target_forms() -> None:
    assert split_target(b"/a?b=1#frag") == (b"/a", b"b=1", b"frag")
    assert split_target(b"*") == (b"*", b"", b"")
    assert split_target(b"http://h:1/x?y") == (b"/x", b"y", b"")


def test_headers() -> None:
    env = environ_for(
        request(
            "/",
            [
                ("Host", "example.com:8443"),
                ("Content-Type", "application/json"),
                ("Content-Length", "12"),
                ("Accept", "text/html"),
                ("accept", "text/plain"),
                ("X-Forwarded-For", "1.2.3.4"),
                ("X_Forwarded_For", "6.6.6.6"),
                ("X-Latin", b"caf\xe9"),
            ],
            method="POST",
        )
    )
    assert env["CONTENT_TYPE"] == "application/json"
    assert env["CONTENT_LENGTH"] == "12"
    assert "HTTP_CONTENT_TYPE" not in env and "HTTP_CONTENT_LENGTH" not in env
    assert env["HTTP_ACCEPT"] == "text/html,text/plain"
    assert env["HTTP_X_FORWARDED_FOR"] == "1.2.3.4"  # the underscore spoof was dropped
    assert env["HTTP_X_LATIN"] == "caf\xe9"
    assert env["SERVER_NAME"] == "example.com" and env["SERVER_PORT"] == "8443"


@pytest.mark.parametrize(
    ("host", "scheme", "name", "port"),
    [
        ("example.com", "https", "example.com", "443"),
        ("[::1]:9000", "http", "[::1]", "9000"),
        ("[::1]", "http", "[::1]", "80"),
        ("h:", "http", "h:", "80"),
    ],
)
def test_server_name_from_host(host: str, scheme: str, name: str, port: str) -> None:
    env = environ_for(request("/", [("Host", host)]), url_scheme=scheme)
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == (name, port)
    assert env["wsgi.url_scheme"] == scheme


def test_server_name_without_host() -> None:
    req = request("/", [], version="1.0")
    env = environ_for(req, server=("::1", 8080, 0, 0))
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("::1", "8080")
    assert env["SERVER_PROTOCOL"] == "HTTP/1.0"
    env = environ_for(req, server="/tmp/app.sock", client="")
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("localhost", "")
    assert env["REMOTE_ADDR"] == "" and "REMOTE_PORT" not in env
    env = environ_for(req, server=None, client=None)
    assert env["SERVER_NAME"] == "localhost"
    assert env["REMOTE_ADDR"] == ""


def test_server_address_given_as_a_callable_is_only_called_without_host() -> None:
    calls: list[int] = []

    def server() -> tuple[str, int]:
        calls.append(1)
        return ("10.1.1.1", 8080)

    env = environ_for(request("/", [("Host", "h:81")]), server=server)
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("h", "81") and calls == []
    env = environ_for(request("/", [], version="1.0"), server=server)
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("10.1.1.1", "8080") and calls == [1]


def test_multithread_flag() -> None:
    env = environ_for(request("/"), multithread=True, multiprocess=False)
    assert env["wsgi.multithread"] is True and env["wsgi.multiprocess"] is False


# ----------------------------------------------------------------------------- InputStream

BODY = b"first line\nsecond\n\nx" + b"y" * 50 + b"\nno newline at end"


def chunker(data: bytes, size: int) -> Callable[[], bytes]:
    pieces = [data[i : i + size] for i in range(0, len(data), size)]
    pieces.reverse()
    return lambda: pieces.pop() if pieces else b""


@pytest.fixture(params=[1, 3, 7, 64, 10_000])
def stream(request: pytest.FixtureRequest) -> InputStream:
    return InputStream(chunker(BODY, request.param))


def test_read_all(stream: InputStream) -> None:
    assert stream.read() == BODY
    assert stream.read() == b""
    assert stream.read(5) == b""


@pytest.mark.parametrize("arg", [None, -1, -5])
def test_read_all_variants(arg: int | None) -> None:
    s = InputStream(chunker(BODY, 4))
    assert s.read(2) == BODY[:2]
    assert s.read(arg) == BODY[2:]


def test_read_sizes(stream: InputStream) -> None:
    assert stream.read(0) == b""
    assert stream.read(5) == BODY[:5]
    assert stream.read(20) == BODY[5:25]
    assert stream.read(10_000) == BODY[25:]
    assert stream.read(1) == b""


def test_readline(stream: InputStream) -> None:
    assert stream.readline() == b"first line\n"
    assert stream.readline(3) == b"sec"
    assert stream.readline(-1) == b"ond\n"
    assert stream.readline() == b"\n"
    assert stream.readline(None) == b"x" + b"y" * 50 + b"\n"
    assert stream.readline() == b"no newline at end"
    assert stream.readline() == b""


def test_readline_limit_larger_than_line(stream: InputStream) -> None:
    assert stream.readline(100) == b"first line\n"
    assert stream.readline(0) == b""


def test_readlines(stream: InputStream) -> None:
    assert stream.readlines() == io.BytesIO(BODY).readlines()


def test_readlines_hint(stream: InputStream) -> None:
    assert stream.readlines(12) == [b"first line\n", b"second\n"]
    assert stream.read() == BODY[len(b"first line\nsecond\n") :]


def test_iteration(stream: InputStream) -> None:
    assert list(stream) == BODY.splitlines(keepends=True)


def test_on_first_read_called_once_before_first_chunk() -> None:
    events: list[str] = []
    pieces = [b"b", b"a"]

    def read_chunk() -> bytes:
        events.append("chunk")
        return pieces.pop() if pieces else b""

    s = InputStream(read_chunk, on_first_read=lambda: events.append("first"))
    assert events == []  # not at construction
    assert s.read(0) == b""
    assert events == []  # nothing was needed
    assert s.read(1) == b"a"
    assert events == ["first", "chunk"]
    assert s.read() == b"b"
    assert s.read() == b""
    assert events.count("first") == 1


def test_empty_body_never_calls_read_chunk_again_after_eof() -> None:
    calls = []

    def read_chunk() -> bytes:
        calls.append(1)
        return b""

    s = InputStream(read_chunk)
    assert s.read() == b"" and s.readline() == b"" and list(s) == []
    assert len(calls) == 1


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("read"), st.one_of(st.none(), st.integers(-1, 40))),
        st.tuples(st.just("readline"), st.one_of(st.none(), st.integers(-1, 40))),
        st.tuples(st.just("readlines"), st.integers(-1, 60)),
    ),
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(
    body=st.binary(max_size=200).map(lambda b: b.replace(b"\x00", b"\n")),
    cuts=st.lists(st.integers(1, 30), max_size=20),
    ops=OPS,
)
def test_matches_bytesio(body: bytes, cuts: list[int], ops: list[tuple[str, int | None]]) -> None:
    pieces: list[bytes] = []
    pos = 0
    for cut in cuts:
        pieces.append(body[pos : pos + cut])
        pos += cut
    pieces.append(body[pos:])
    pieces = [p for p in pieces if p]
    pieces.reverse()
    stream = InputStream(lambda: pieces.pop() if pieces else b"")
    reference = io.BytesIO(body)
    for name, arg in ops:
        assert getattr(stream, name)(arg) == getattr(reference, name)(arg), (name, arg)
    assert stream.read() == reference.read()


# ----------------------------------------------------------------------------- start_response


class Sent:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)


def starter() -> tuple[ResponseStarter, Sent]:
    sent = Sent()
    return ResponseStarter(sent.write), sent


def test_start_response_records_and_returns_write() -> None:
    rs, sent = starter()
    assert not rs.started
    write = rs.start_response("404 Not Found", [("Content-Type", "text/plain")])
    assert rs.started
    assert (rs.status, rs.status_code, rs.reason) == ("404 Not Found", 404, "Not Found")
    assert rs.headers == [("Content-Type", "text/plain")]
    write(b"x")
    assert sent.written == [b"x"]


def test_start_response_twice_without_exc_info_fails() -> None:
    rs, _ = starter()
    rs.start_response("200 OK", [])
    with pytest.raises(RuntimeError):
        rs.start_response("500 Error", [])
    assert rs.status == "200 OK"


def exc_info() -> Any:
    try:
        raise ValueError("app failure")
    except ValueError:
        return sys.exc_info()


def test_exc_info_before_headers_sent_replaces_response() -> None:
    rs, _ = starter()
    rs.start_response("200 OK", [("X-A", "1")])
    rs.start_response("500 Internal Server Error", [("X-B", "2")], exc_info())
    assert rs.status_code == 500 and rs.headers == [("X-B", "2")]


def test_exc_info_after_headers_sent_reraises() -> None:
    rs, _ = starter()
    rs.start_response("200 OK", [])
    rs.headers_sent = True
    info = exc_info()
    with pytest.raises(ValueError, match="app failure") as caught:
        rs.start_response("500 Internal Server Error", [], info)
    assert caught.value is info[1]
    assert rs.status == "200 OK"


def test_exc_info_as_first_call_is_allowed() -> None:
    rs, _ = starter()
    rs.start_response("500 Internal Server Error", [], exc_info())
    assert rs.status_code == 500


@pytest.mark.parametrize("status", ["200", "200 OK", "599 Custom reason", "418 I'm a teapot"])
def test_valid_status(status: str) -> None:
    rs, _ = starter()
    rs.start_response(status, [])
    assert rs.status_code == int(status[:3])


@pytest.mark.parametrize(
    "status", ["OK", "20 OK", "2000 OK", " 200 OK", "200  OK\r\n", "200 OK\nX: y", "099 Low"]
)
def test_invalid_status(status: str) -> None:
    rs, _ = starter()
    with pytest.raises(ValueError):
        rs.start_response(status, [])
    assert not rs.started


@pytest.mark.parametrize(
    ("headers", "error"),
    [
        ([(b"X-A", "1")], TypeError),
        ([("X-A", b"1")], TypeError),
        ([("X-A", 1)], TypeError),
        ([("X-A", "1", "extra")], TypeError),
        ((("X-A", "1"),), None),
        ("X-A: 1", TypeError),
        ([("X A", "1")], ValueError),
        ([("X-A:", "1")], ValueError),
        ([("", "1")], ValueError),
        ([("X-A", "a\r\nSet-Cookie: x")], ValueError),
        ([("X-A", "a\nb")], ValueError),
        ([("X-A", "a\x00b")], ValueError),
        ([("X-A", "snow\u2603man")], ValueError),
        ([("X-A", "caf\xe9\tok")], None),
        # PEP 3333: hop-by-hop fields belong to the server, never to the application.
        ([("Connection", "close")], None),  # honoured by the connection layer
        ([("Transfer-Encoding", "chunked")], ValueError),
        ([("keep-alive", "timeout=5")], ValueError),
        ([("Upgrade", "h2c")], ValueError),
    ],
)
def test_header_validation(headers: Any, error: type[Exception] | None) -> None:
    rs, _ = starter()
    status = "200 OK"
    if error is None:
        rs.start_response(status, headers)
        assert rs.headers == list(headers)
    else:
        with pytest.raises(error):
            rs.start_response(status, headers)
        assert not rs.started


def test_status_must_be_str() -> None:
    rs, _ = starter()
    with pytest.raises(TypeError):
        rs.start_response(b"200 OK", [])  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- FileWrapper


class ClosingBytesIO(io.BytesIO):
    closed_calls = 0

    def close(self) -> None:
        self.closed_calls += 1
        super().close()


def test_file_wrapper_iterates_in_blocks_and_closes() -> None:
    f = ClosingBytesIO(b"abcdefghij")
    wrapper = FileWrapper(f, 4)
    assert wrapper.filelike is f and wrapper.blksize == 4
    assert list(wrapper) == [b"abcd", b"efgh", b"ij"]
    assert wrapper.fileno() is None  # BytesIO has no descriptor: no sendfile
    wrapper.close()
    assert f.closed_calls == 1


def test_file_wrapper_fileno_of_real_file(tmp_path: Any) -> None:
    p = tmp_path / "f.bin"
    p.write_bytes(b"x" * 10)
    with open(p, "rb") as f:
        wrapper = FileWrapper(f)
        assert wrapper.fileno() == f.fileno()
        assert b"".join(wrapper) == b"x" * 10
        wrapper.close()
        assert f.closed


def test_file_wrapper_without_close() -> None:
    class Reader:
        def read(self, n: int) -> bytes:
            return b""

    wrapper = FileWrapper(Reader(), 10)  # type: ignore[arg-type]
    assert list(wrapper) == []
    wrapper.close()  # no close() on the file-like: nothing to do


def test_validated_headers_are_remembered_but_never_wrong_ones() -> None:
    good = [("Content-Type", "text/plain"), ("X-A", "1")]
    assert validate_headers(good) == good
    assert validate_headers(list(good)) == good  # the remembered path: same answer
    # Equal-looking but not str: still refused, although ("X-A", "1") is remembered.
    with pytest.raises(TypeError):
        validate_headers([("X-A", b"1")])
    with pytest.raises(TypeError):
        validate_headers([["X-A", "1"]])  # a list, not a tuple
    with pytest.raises(ValueError):
        validate_headers([("X-A", "1\r\nX-B: 2")])
    for i in range(3000):  # the memory is bounded: it starts over
        assert validate_headers([("X-N", str(i))]) == [("X-N", str(i))]
    assert len(wsgi._VALID_HEADERS) <= wsgi._MAX_VALID_HEADERS


def test_validated_statuses_are_remembered_but_never_wrong_ones() -> None:
    assert validate_status("200 OK") == (200, "OK")
    assert validate_status("200 OK") == (200, "OK")  # the remembered path
    with pytest.raises(ValueError):
        validate_status("200 OK\r\nX: y")
    for code in range(300):  # bounded memory: it starts over
        assert validate_status(f"{200 + code % 300} R{code}") == (200 + code % 300, f"R{code}")
    assert len(wsgi._VALID_STATUSES) <= wsgi._MAX_VALID_STATUSES


def test_environ_keys_of_header_names_stay_right_past_their_bounded_memory() -> None:
    for i in range(wsgi._MAX_ENVIRON_KEYS + 10):
        env = environ_for(request("/", [("Host", "h"), (f"X-NAME-{i}", "v")]))
        assert env[f"HTTP_X_NAME_{i}"] == "v"
    assert len(wsgi._ENVIRON_KEYS) <= wsgi._MAX_ENVIRON_KEYS
    env = environ_for(request("/a%20b/c", [("Host", "h")]))
    assert env["PATH_INFO"] == "/a b/c"
