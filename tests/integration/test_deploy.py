"""Deployment forms with a real Gunicorn and ``-k gunicorn_fdpass.Worker`` (issue 5, part 4).

Several ``--bind`` at once (TCP, unix, IPv6), ``unix:`` with ``--umask``, ``fd://N``, systemd
socket activation, TLS with client certificates (handshake in the worker), ``--preload``,
``--user/--group``, ``--daemon --pid``, ``--chdir``, ``--reload``. (``--reuse-port`` is in
test_workers.py.)
"""

from __future__ import annotations

import json
import os
import pwd
import re
import signal
import socket
import ssl
import stat
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import attach_server
from tests.support.deploy import (
    Launched,
    children,
    gunicorn_cmd,
    ipv6_loopback_available,
    listening_urls,
    poll,
    port_of,
    proc_ids,
    server_side_inode,
    tcp_socket_inodes,
    unix_get,
    unix_listen_inode,
    wait_for_file_text,
)
from tests.support.http import RawHTTPConnection, build_request, request
from tests.support.server import GunicornServer, listen_inode, pid_alive, socket_inodes

pytestmark = [pytest.mark.integration, pytest.mark.ours_only]


def _write_app(directory: Path, name: str, body: str) -> None:
    (directory / f"{name}.py").write_text(textwrap.dedent(body))


def _worker_of(resp_pid: str | None, workers: list[int]) -> int:
    assert resp_pid is not None and int(resp_pid) in workers, (resp_pid, workers)
    return int(resp_pid)


@pytest.fixture
def launch(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator:
    """Factory: start ``gunicorn_cmd(*args)`` by hand (for binds the harness's ``fd://``
    excludes: Gunicorn 27 serves only the fd:// listeners when one is given), wait until
    ``workers`` booted; every server is stopped at the end of the test."""
    started: list[Launched] = []

    def factory(*args: str, workers: int = 1, env: dict[str, str] | None = None) -> Launched:
        srv = Launched(gunicorn_cmd("-w", str(workers), "--graceful-timeout", "3", *args),
                       tmp_path / f"server{len(started)}.log", env=env)
        started.append(srv)
        attach_server(request, srv)  # type: ignore[arg-type]  # its log on failure
        srv.wait_for_workers(workers)
        srv.wait_for_log(r"Listening at: ")
        return srv

    yield factory
    for srv in started:
        assert srv.stop(), "gunicorn did not stop cleanly:\n" + srv.log_text()


# -- binds ---------------------------------------------------------------------------------

@pytest.mark.parametrize("ipv6", [False, True], ids=["tcp+unix", "tcp+unix+ipv6"])
def test_several_binds_at_once_all_serve_and_only_the_master_listens(
        launch, tmp_path: Path, ipv6: bool) -> None:
    if ipv6 and not ipv6_loopback_available():
        pytest.skip("no IPv6 loopback on this host")
    sock_path = str(tmp_path / "g.sock")
    args = ["--bind", "127.0.0.1:0", "--bind", f"unix:{sock_path}"]
    args += ["--bind", "[::1]:0"] if ipv6 else []
    srv = launch(*args, "tests.apps:app", workers=2)
    workers = srv.workers()
    urls = listening_urls(srv.log_text())
    assert len(urls) == (3 if ipv6 else 2), urls
    assert f"unix:{sock_path}" in urls
    v4 = [u for u in urls if u.startswith("http://127.0.0.1:")]
    assert len(v4) == 1, urls
    port4 = port_of(v4[0])

    # HTTP/1.0 without Host: SERVER_NAME/PORT come from the socket the worker was given.
    resp = request(port4, "GET", "/environ", version="HTTP/1.0")
    assert resp.status == 200
    environ = resp.json()
    assert (environ["REMOTE_ADDR"], environ["SERVER_PORT"]) == ("127.0.0.1", str(port4))
    listeners = {listen_inode(port4), unix_listen_inode(sock_path)}
    for _ in range(4):
        resp = unix_get(sock_path, "/pid")
        assert resp.status == 200
        _worker_of(resp.text, workers)
    if ipv6:
        v6 = [u for u in urls if u.startswith("http://[::1]:")]
        assert len(v6) == 1, urls
        port6 = port_of(v6[0])
        assert port6 not in (0, port4)
        resp = request(port6, "GET", "/environ", host="::1", version="HTTP/1.0")
        assert resp.status == 200
        environ = resp.json()
        assert environ["REMOTE_ADDR"] == "::1"
        assert environ["SERVER_PORT"] == str(port6)
        listeners.add(listen_inode(port6))
    assert len(listeners) == len(urls)
    assert listeners <= set(socket_inodes(srv.master_pid).values())
    for pid in srv.workers():
        held = listeners & set(socket_inodes(pid).values())
        assert not held, f"worker {pid} holds listeners {held}"


@pytest.mark.parametrize("umask,mode", [(0o007, 0o770), (0o077, 0o700)])
def test_unix_socket_mode_follows_umask(launch, tmp_path: Path, umask: int, mode: int
                                        ) -> None:
    sock_path = str(tmp_path / "u.sock")
    srv = launch("--bind", f"unix:{sock_path}", "--umask", oct(umask), "tests.apps:app")
    assert listening_urls(srv.log_text()) == [f"unix:{sock_path}"]
    st = os.stat(sock_path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == mode, oct(stat.S_IMODE(st.st_mode))
    resp = unix_get(sock_path, "/")
    assert resp.status == 200 and resp.body == b"Hello, World!\n"
    _worker_of(resp.header("X-Worker-Pid"), srv.workers())


def test_fd_bind_uses_the_inherited_socket(make_server) -> None:
    """``--bind fd://N`` (the harness's form): Gunicorn serves on the socket it was given
    (same inode, no socket of its own), held by the master only."""
    srv: GunicornServer = make_server(workers=1)
    assert listening_urls(srv.log_text()) == [f"http://127.0.0.1:{srv.port}"]
    inode = listen_inode(srv.port)
    assert tcp_socket_inodes(srv.pid) == {inode}
    resp = srv.get("/")
    assert resp.status == 200
    worker = _worker_of(resp.header("X-Worker-Pid"), srv.worker_pids())
    assert inode not in socket_inodes(worker).values()


# -- systemd socket activation ---------------------------------------------------------

def test_systemd_socket_activation(tmp_path: Path) -> None:
    """``LISTEN_FDS=1``, ``LISTEN_PID`` = gunicorn's pid, the socket at fd 3, no --bind."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    port = listener.getsockname()[1]
    inode = os.fstat(listener.fileno()).st_ino
    fd = listener.fileno()

    def put_at_fd3() -> None:  # in the child, before exec; fd 3 stays open across exec
        os.dup2(fd, 3)
        if fd != 3:
            os.set_inheritable(3, True)

    cmd = ["sh", "-c", 'export LISTEN_PID=$$; exec "$@"', "sh",
           *gunicorn_cmd("-w", "2", "--graceful-timeout", "3", "tests.apps:app")]
    # close_fds=False: subprocess would close fd 3 after the preexec_fn; the listener's
    # own fd is close-on-exec, so the server gets only fd 3 (and 0-2).
    srv = Launched(cmd, tmp_path / "server.log", env={"LISTEN_FDS": "1"},
                   preexec_fn=put_at_fd3, close_fds=False)
    listener.close()
    try:
        workers = srv.wait_for_workers(2)
        srv.wait_for_log(r"Listening at: ")
        assert listening_urls(srv.log_text()) == [f"http://127.0.0.1:{port}"], srv.log_text()
        assert ":8000" not in srv.log_text()  # no default bind of its own
        resp = request(port, "GET", "/")
        assert resp.status == 200
        _worker_of(resp.header("X-Worker-Pid"), workers)
        # Gunicorn moved it off fd 3 (dup, close): the same socket, and no other. (The
        # master's copy of the answered connection goes once the worker's Done arrives,
        # which may be just after the response and its FIN reached us.)
        assert poll(lambda: tcp_socket_inodes(srv.master_pid) == {inode}), (
            tcp_socket_inodes(srv.master_pid), inode)
        for pid in workers:
            assert inode not in socket_inodes(pid).values()
    finally:
        assert srv.stop(), srv.log_text()


# -- TLS -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    d = tmp_path_factory.mktemp("tls")
    files = {name: str(d / f"{name}.pem") for name in
             ("cert", "key", "ca", "client")}
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.cert_chain_pems[0].write_to_path(files["cert"])
    server.private_key_pem.write_to_path(files["key"])
    ca.cert_pem.write_to_path(files["ca"])
    ca.issue_cert("client@example.com").private_key_and_cert_chain_pem.write_to_path(
        files["client"])
    yield files


def _tls_get(port: int, context: ssl.SSLContext, target: str = "/environ") -> bytes:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        conn = context.wrap_socket(raw, server_hostname="127.0.0.1")
        conn.sendall(build_request("GET", target, {"Host": "127.0.0.1",
                                                   "Connection": "close"}))
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
        conn.close()
        return data
    finally:
        raw.close()


def test_tls_with_required_client_certificate_handshake_in_the_worker(
        make_server, tls: dict[str, str]) -> None:
    srv: GunicornServer = make_server(workers=2, wait_ready=False, args=[
        "--certfile", tls["cert"], "--keyfile", tls["key"],
        "--ca-certs", tls["ca"], "--cert-reqs", "2"])
    workers = srv.wait_for_workers(2)
    listener = listen_inode(srv.port)

    # With a client certificate issued by the CA: served.
    with_cert = ssl.create_default_context(cafile=tls["ca"])
    with_cert.load_cert_chain(tls["client"])
    data = _tls_get(srv.port, with_cert)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), data[:200]
    assert json.loads(body)["wsgi.url_scheme"] == "https"

    # Without one: the handshake fails, no HTTP answer at all.
    no_cert = ssl.create_default_context(cafile=tls["ca"])
    try:
        answer = _tls_get(srv.port, no_cert)
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        answer = b""
    assert b"HTTP/" not in answer, answer[:200]

    # The handshake happens in the worker: once the client's handshake is complete (the
    # server's Finished needs the server's key), the worker holds the connection; the
    # master holds only its own copy of it (kept until the worker's Done, since issue 11) and
    # no other client; the request is then answered by that worker.
    raw = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    try:
        conn = with_cert.wrap_socket(raw, server_hostname="127.0.0.1")
        inode = server_side_inode(srv.port, conn.getsockname()[1])
        assert poll(lambda: tcp_socket_inodes(srv.pid) == {listener, inode}), (
            "the master holds another TLS client")
        holders = [pid for pid in workers if inode in socket_inodes(pid).values()]
        assert len(holders) == 1, (inode, {p: socket_inodes(p) for p in workers})
        conn.sendall(build_request("GET", "/pid", {"Host": "127.0.0.1",
                                                   "Connection": "close"}))
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
        assert data.startswith(b"HTTP/1.1 200 ")
        assert data.partition(b"\r\n\r\n")[2] == str(holders[0]).encode()
        conn.close()
    finally:
        raw.close()


# -- app loading -----------------------------------------------------------------------------

PID_APP = """
    import os

    LOADED_IN = os.getpid()
    CWD_AT_IMPORT = os.getcwd()


    def app(environ, start_response):
        body = ('{"loaded_in": %d, "pid": %d, "cwd": "%s", "file": "%s", "version": "%s"}'
                % (LOADED_IN, os.getpid(), os.getcwd(), __file__, VERSION)).encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body)))])
        return [body]


    VERSION = "v1"
"""


@pytest.mark.parametrize("preload", [True, False], ids=["preload", "no-preload"])
def test_preload_imports_the_app_in_the_master(make_server, tmp_path: Path,
                                               preload: bool) -> None:
    _write_app(tmp_path, "pidapp", PID_APP)
    args = ["--pythonpath", str(tmp_path)] + (["--preload"] if preload else [])
    srv: GunicornServer = make_server(workers=2, app="pidapp:app", args=args)
    workers = srv.wait_for_workers(2)
    seen = set()
    for _ in range(6):
        info = srv.get("/").json()
        assert isinstance(info, dict)
        assert info["pid"] in workers
        seen.add(info["pid"])
        if preload:
            assert info["loaded_in"] == srv.pid
        else:
            assert info["loaded_in"] == info["pid"]
    assert seen  # served by the workers either way


def test_chdir_to_a_directory_holding_its_own_app(make_server, tmp_path: Path) -> None:
    app_dir = tmp_path / "site"
    app_dir.mkdir()
    _write_app(app_dir, "chdirapp", PID_APP)
    srv: GunicornServer = make_server(workers=1, app="chdirapp:app",
                                      args=["--chdir", str(app_dir)])
    info = srv.get("/").json()
    assert isinstance(info, dict)
    assert info["cwd"] == str(app_dir.resolve())
    assert Path(info["file"]).resolve() == (app_dir / "chdirapp.py").resolve()
    for pid in [srv.pid, *srv.worker_pids()]:
        assert os.readlink(f"/proc/{pid}/cwd") == str(app_dir.resolve())


def test_reload_serves_the_changed_app(make_server, tmp_path: Path) -> None:
    _write_app(tmp_path, "reloadapp", PID_APP)
    srv: GunicornServer = make_server(workers=1, app="reloadapp:app",
                                      args=["--reload", "--chdir", str(tmp_path)])
    first = srv.get("/").json()
    assert isinstance(first, dict) and first["version"] == "v1"
    path = tmp_path / "reloadapp.py"
    path.write_text(path.read_text().replace('VERSION = "v1"', 'VERSION = "v2"'))
    bumps = 0

    def version() -> str:
        nonlocal bumps
        try:
            info = srv.get("/", timeout=5).json()
        except Exception:
            return ""
        assert isinstance(info, dict)
        if info["version"] == "v2":
            return "v2"
        # Gunicorn's polling reloader takes each file's first mtime as its baseline, on its
        # own thread's first pass: a change made before that pass is the baseline itself.
        # A later mtime each time counts as a change once the baseline exists.
        bumps += 1
        later = time.time() + 2 + bumps
        os.utime(path, (later, later))
        return ""
    assert poll(version, timeout=20, interval=0.2) == "v2", srv.log_text()
    srv.wait_for_log(r"Worker reloading: .*reloadapp\.py modified")
    info = srv.get("/").json()
    assert isinstance(info, dict)
    assert info["pid"] != first["pid"]  # a new worker imported the new code
    assert srv.returncode is None


# -- processes -------------------------------------------------------------------------------

def test_user_and_group_drop_privileges_in_the_workers(make_server) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to switch users")
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody")
    try:
        import grp
        gid = grp.getgrnam("nogroup").gr_gid
        group = "nogroup"
    except KeyError:
        gid, group = nobody.pw_gid, str(nobody.pw_gid)
    args = ["--user", "nobody", "--group", group]
    if not _world_readable(Path(os.__file__)):
        # Here the interpreter lives under a directory only root may enter (/root/.pyenv):
        # the workers, once nobody, could import nothing new; the master imports the app.
        args.append("--preload")
    srv: GunicornServer = make_server(workers=2, args=args)
    workers = srv.wait_for_workers(2)
    for _ in range(4):
        resp = srv.get("/")
        assert resp.status == 200
        _worker_of(resp.header("X-Worker-Pid"), workers)
    for pid in workers:
        uid, gids = proc_ids(pid)
        assert uid == [nobody.pw_uid] * 4, (pid, uid)
        assert gids == [gid] * 4, (pid, gids)
    uid, _ = proc_ids(srv.pid)
    assert uid[0] == os.geteuid()  # the master keeps its user (it owns the listeners)


def _world_readable(path: Path) -> bool:
    """Whether any user can read ``path`` (every parent directory searchable)."""
    path = path.resolve()
    if not os.stat(path).st_mode & stat.S_IROTH:
        return False
    return all(os.stat(parent).st_mode & stat.S_IXOTH for parent in path.parents)


def test_daemon_with_pid_file(tmp_path: Path) -> None:
    pidfile = tmp_path / "gunicorn.pid"
    logfile = tmp_path / "error.log"
    cmd = gunicorn_cmd("--daemon", "--pid", str(pidfile), "--bind", "127.0.0.1:0",
                       "-w", "1", "--graceful-timeout", "3",
                       "--error-logfile", str(logfile), "tests.apps:app")
    launcher = Launched(cmd, tmp_path / "launcher.log")
    daemon = 0
    workers: list[int] = []
    try:
        # The command returns at once; the daemon lives on, detached.
        assert launcher.proc.wait(timeout=15) == 0, launcher.log_text()
        daemon = poll(lambda: int(pidfile.read_text()) if pidfile.exists()
                      and pidfile.read_text().strip() else 0, timeout=15)
        assert daemon and daemon != launcher.proc.pid
        assert pid_alive(daemon)
        assert os.getsid(daemon) != os.getsid(0)  # its own session
        assert daemon not in children(os.getpid())
        m = wait_for_file_text(logfile, r"Listening at: (\S+) \((\d+)\)")
        assert int(m.group(2)) == daemon
        port = port_of(m.group(1))
        workers = poll(lambda: children(daemon), timeout=15)
        resp = poll(lambda: _try_get(port), timeout=15)
        assert resp is not None and resp.status == 200
        assert int(resp.header("X-Worker-Pid") or 0) in children(daemon)
        os.kill(daemon, signal.SIGTERM)
        gone = poll(lambda: not pid_alive(daemon) and not any(pid_alive(p) for p in workers),
                    timeout=15)
        assert gone, "the daemon did not stop on TERM:\n" + logfile.read_text()
        assert poll(lambda: not pidfile.exists(), timeout=5), "pid file left behind"
    finally:
        for pid in [daemon, *workers]:
            if pid and pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        if launcher.proc.poll() is None:
            launcher.proc.kill()
            launcher.proc.wait()


def _try_get(port: int):
    try:
        with RawHTTPConnection("127.0.0.1", port, timeout=5) as conn:
            return conn.request("GET", "/")
    except OSError:
        return None


# -- python -m gunicorn ---------------------------------------------------------------------

def test_usr2_upgrade_of_a_master_started_with_python_m_gunicorn(launch) -> None:
    srv = launch("--bind", "127.0.0.1:0", "tests.apps:app")
    mark = len(srv.log_text())
    os.kill(srv.master_pid, signal.SIGUSR2)
    listening = re.compile(r"Listening at: \S+ \((\d+)\)")

    def outcome() -> tuple[int, str]:
        text = srv.log_text()[mark:]
        pids = [int(p) for p in listening.findall(text) if int(p) != srv.master_pid]
        return (pids[0], "") if pids else (0, text if "Traceback" in text else "")
    new_master, failure = poll(lambda: outcome() if any(outcome()) else None,
                               timeout=20) or (0, "timed out")
    assert new_master, "USR2 did not give a new master:\n" + failure
    workers: list[int] = []
    try:
        workers = poll(lambda: children(new_master), timeout=15)
        assert workers, "the new master has no workers:\n" + srv.log_text()
    finally:
        if pid_alive(new_master):  # started by our USR2
            os.kill(new_master, signal.SIGTERM)
            if not poll(lambda: not pid_alive(new_master)
                        and not any(pid_alive(p) for p in workers), timeout=15):
                for p in [new_master, *workers]:
                    if pid_alive(p):
                        os.kill(p, signal.SIGKILL)
