"""Start a real Gunicorn master (with real worker processes) for integration tests.

Usage::

    with GunicornServer(workers=2) as srv:
        resp = srv.get("/")
        srv.worker_pids()

The listening socket is created here (127.0.0.1, port 0, already listening) and handed
to Gunicorn with ``--bind fd://N`` + ``pass_fds``, so the port is known before Gunicorn
starts and there is no race on picking a free port.  Gunicorn runs in its own session /
process group; :meth:`GunicornServer.stop` terminates the master and, only if needed,
SIGKILLs that process group.  Servers still running at interpreter exit are stopped by
an ``atexit`` hook.  Only processes started by this harness are ever signalled.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from . import http

REPO_ROOT = Path(__file__).resolve().parents[2]
OUR_WORKER_CLASS = "gunicorn_fdpass.Worker"
DEFAULT_READY_TIMEOUT = 15.0

BOOT_RE = re.compile(r"Booting worker with pid: (\d+)")


def worker_class_under_test() -> str:
    """The worker class the integration suite runs against (``-k``)."""
    return os.environ.get("FDPASS_TEST_WORKER_CLASS", OUR_WORKER_CLASS)


def is_our_worker(worker_class: str | None = None) -> bool:
    wc = worker_class if worker_class is not None else worker_class_under_test()
    return wc.startswith("gunicorn_fdpass") or "fdpass" in wc.lower()


class ServerError(RuntimeError):
    """The server did not start / behave; the message includes the server log."""


_LIVE: weakref.WeakSet[GunicornServer] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:  # pragma: no cover - safety net
    for srv in list(_LIVE):
        try:
            srv.stop(timeout=5)
        except Exception:
            pass


def _proc_children(pid: int) -> list[int]:
    """Live (non-zombie) children of ``pid``."""
    kids: set[int] = set()
    found_children_file = False
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/children") as fh:
                    found_children_file = True
                    kids.update(int(x) for x in fh.read().split())
            except (FileNotFoundError, ProcessLookupError):
                continue
    except FileNotFoundError:
        return []
    if not found_children_file:
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            st = _proc_stat(int(name))
            if st is not None and st[1] == pid:
                kids.add(int(name))
    out = []
    for k in sorted(kids):
        st = _proc_stat(k)
        if st is not None and st[0] != "Z" and st[1] == pid:
            out.append(k)
    return out


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process, or None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            data = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    rest = data[data.rfind(")") + 2:].split()
    return rest[0], int(rest[1])


def pid_alive(pid: int) -> bool:
    st = _proc_stat(pid)
    return st is not None and st[0] != "Z"


class GunicornServer:
    """A real ``gunicorn`` master process serving on 127.0.0.1:<port>.

    Parameters
    ----------
    app:            WSGI app spec (``module:callable``)
    workers:        number of workers (``-w``)
    threads:        ``--threads`` (None: not passed)
    worker_class:   ``-k``; default from ``FDPASS_TEST_WORKER_CLASS``
    args:           extra command-line arguments (appended last, so they win)
    env:            extra environment variables for the server
    config:         content of a Gunicorn config file (written to a temp dir, ``-c``)
    ready_timeout:  bound on the readiness wait
    wait_ready:     if False, :meth:`start` returns right after spawning (for tests
                    that expect startup to fail; use :meth:`wait`)
    graceful_timeout: passed as ``--graceful-timeout`` (before ``args``) to keep
                    shutdown quick
    """

    def __init__(self, app: str = "tests.apps:app", workers: int = 2, threads: int | None = None,
                 worker_class: str | None = None, args: Sequence[str] = (),
                 env: Mapping[str, str] | None = None, config: str | None = None,
                 ready_timeout: float = DEFAULT_READY_TIMEOUT, wait_ready: bool = True,
                 graceful_timeout: float = 3, log_level: str = "info",
                 cwd: str | os.PathLike[str] | None = None) -> None:
        self.app = app
        self.workers = workers
        self.threads = threads
        self.worker_class = worker_class if worker_class is not None else worker_class_under_test()
        self.args = list(args)
        self.env = dict(env or {})
        self.config = config
        self.ready_timeout = ready_timeout
        self.wait_ready = wait_ready
        self.graceful_timeout = graceful_timeout
        self.log_level = log_level
        self.cwd = str(cwd) if cwd is not None else str(REPO_ROOT)
        self.proc: subprocess.Popen[bytes] | None = None
        self._listen_fd: int | None = None
        self.tmpdir: str | None = None
        self._port: int | None = None
        self._log_path: str | None = None
        self._returncode: int | None = None

    # -- lifecycle ----------------------------------------------------------------
    def __enter__(self) -> GunicornServer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def command(self) -> list[str]:
        assert self._listen_fd is not None
        cmd = [sys.executable, "-m", "gunicorn",
               "--bind", f"fd://{self._listen_fd}",
               "--no-control-socket",
               "-k", self.worker_class,
               "-w", str(self.workers),
               "--log-level", self.log_level,
               "--graceful-timeout", str(self.graceful_timeout),
               "--error-logfile", "-"]
        if self.threads is not None:
            cmd += ["--threads", str(self.threads)]
        if self.config is not None:
            assert self.tmpdir is not None
            cfg = os.path.join(self.tmpdir, "gunicorn.conf.py")
            cmd += ["-c", cfg]
        cmd += self.args
        cmd.append(self.app)
        return cmd

    def start(self) -> GunicornServer:
        if self.proc is not None:
            raise ServerError("already started")
        self.tmpdir = tempfile.mkdtemp(prefix="fdpass-it-")
        if self.config is not None:
            with open(os.path.join(self.tmpdir, "gunicorn.conf.py"), "w") as fh:
                fh.write(self.config)
        self._log_path = os.path.join(self.tmpdir, "server.log")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", 0))
            listener.listen(1024)
            self._port = listener.getsockname()[1]
            self._listen_fd = listener.fileno()
            listener.set_inheritable(True)
            env = os.environ.copy()
            pp = env.get("PYTHONPATH")
            env["PYTHONPATH"] = self.cwd + (os.pathsep + pp if pp else "")
            env["PYTHONUNBUFFERED"] = "1"
            env.pop("GUNICORN_CMD_ARGS", None)
            # The harness's own knob, not a server setting: gunicorn_fdpass refuses FDPASS_*
            # names it does not know (a test running our worker while it is set would fail).
            env.pop("FDPASS_TEST_WORKER_CLASS", None)
            env.update(self.env)
            with open(self._log_path, "wb") as log:
                self.proc = subprocess.Popen(
                    self.command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    pass_fds=(self._listen_fd,), start_new_session=True, cwd=self.cwd, env=env)
        finally:
            listener.close()  # the server holds its own copy now
            self._listen_fd = None
        _LIVE.add(self)
        if self.wait_ready:
            self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while True:
            self._check_running("while starting")
            if len(self.booted_pids()) >= self.workers:
                break
            if time.monotonic() > deadline:
                raise ServerError(f"workers did not boot within {self.ready_timeout:.1f}s\n"
                                  f"{self.log_text()}")
            time.sleep(0.05)
        last_exc: Exception | None = None
        while time.monotonic() < deadline:
            self._check_running("while starting")
            try:
                http.request(self.port, "GET", "/", timeout=max(0.5, deadline - time.monotonic()))
                return
            except Exception as e:
                last_exc = e
                time.sleep(0.05)
        raise ServerError(f"server did not answer within {self.ready_timeout:.1f}s ({last_exc!r})\n"
                          f"{self.log_text()}")

    def _check_running(self, what: str) -> None:
        assert self.proc is not None
        rc = self.proc.poll()
        if rc is not None:
            raise ServerError(f"gunicorn exited with {rc} {what}\n{self.log_text()}")

    def wait(self, timeout: float) -> int:
        """Wait (bounded) for the master to exit by itself; returns its exit code."""
        assert self.proc is not None
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise ServerError(f"gunicorn still running after {timeout:.1f}s\n"
                              f"{self.log_text()}") from e
        self._returncode = rc
        self._reap_group()
        return rc

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the master, wait up to ``timeout``; SIGKILL the process group only if
        the master does not exit in time or workers are left behind. Returns the exit
        code of the master (None if never started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._killpg()
                self.proc.wait(timeout=10)
        self._returncode = self.proc.returncode
        self._reap_group()
        _LIVE.discard(self)
        return self._returncode

    def _reap_group(self) -> None:
        """Kill anything left in our process group (e.g. orphaned workers)."""
        assert self.proc is not None
        if not self._group_alive():
            return
        # Members remain (workers of a dead master exit by themselves soon): wait briefly.
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and self._group_alive():
            time.sleep(0.02)
        if self._group_alive():
            self._killpg()
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline and self._group_alive():
                time.sleep(0.02)

    def _group_alive(self) -> bool:
        """Whether a non-zombie process is still in our process group."""
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        pgid = self.proc.pid
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat") as fh:
                    data = fh.read()
            except OSError:
                continue
            rest = data[data.rfind(")") + 2:].split()
            if rest[0] != "Z" and int(rest[2]) == pgid:
                return True
        return False

    def _killpg(self) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def cleanup(self) -> None:
        """Remove the temp dir (log, config). Call after stop() when done with the log."""
        if self.tmpdir and os.path.isdir(self.tmpdir):
            shutil.rmtree(self.tmpdir, ignore_errors=True)

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.stop(timeout=5)
        except Exception:
            pass

    # -- introspection ------------------------------------------------------------
    @property
    def port(self) -> int:
        assert self._port is not None
        return self._port

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        if self.proc is None:
            return None
        return self.proc.poll()

    @property
    def log_path(self) -> str:
        assert self._log_path is not None
        return self._log_path

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def worker_pids(self) -> list[int]:
        """Live children of the master (its workers)."""
        return _proc_children(self.pid)

    def booted_pids(self) -> list[int]:
        """Every pid the log says booted as a worker, in order (dead ones included)."""
        return [int(m) for m in BOOT_RE.findall(self.log_text())]

    def wait_for_workers(self, count: int | None = None, timeout: float = 15.0,
                         exclude: Iterable[int] = ()) -> list[int]:
        """Wait until ``count`` (default: ``workers``) live, booted workers exist, none
        of them in ``exclude``. Returns their pids."""
        count = self.workers if count is None else count
        excluded = set(exclude)
        deadline = time.monotonic() + timeout
        while True:
            booted = set(self.booted_pids())
            live = [p for p in self.worker_pids() if p in booted and p not in excluded]
            if len(live) >= count:
                return live
            self._check_running("while waiting for workers")
            if time.monotonic() > deadline:
                raise ServerError(f"expected {count} workers (excluding {sorted(excluded)}), "
                                  f"have {live} after {timeout:.1f}s\n{self.log_text()}")
            time.sleep(0.05)

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the master."""
        assert self.proc is not None
        self.proc.send_signal(sig)

    def log_text(self) -> str:
        if self._log_path is None or not os.path.exists(self._log_path):
            return ""
        with open(self._log_path, "rb") as fh:
            return fh.read().decode("utf-8", "replace")

    def wait_for_log(self, pattern: str | re.Pattern[str], timeout: float = 10.0,
                     start: int = 0) -> re.Match[str]:
        """Wait until ``pattern`` (regex) appears in the log at or after offset ``start``."""
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.log_text(), start)
            if m:
                return m
            if time.monotonic() > deadline:
                raise ServerError(f"pattern {rx.pattern!r} not in log after {timeout:.1f}s\n"
                                  f"{self.log_text()}")
            time.sleep(0.05)

    def log_size(self) -> int:
        return len(self.log_text())

    # -- HTTP convenience -----------------------------------------------------------
    def request(self, method: str = "GET", target: str = "/", **kw: Any) -> http.Response:
        return http.request(self.port, method, target, **kw)

    def get(self, target: str = "/", **kw: Any) -> http.Response:
        return http.request(self.port, "GET", target, **kw)

    def connect(self, timeout: float = http.DEFAULT_TIMEOUT) -> http.RawHTTPConnection:
        return http.RawHTTPConnection("127.0.0.1", self.port, timeout=timeout)


# -- /proc helpers for fd-hygiene tests ---------------------------------------------

def socket_inodes(pid: int) -> dict[int, int]:
    """{fd: socket inode} for every socket fd of ``pid``."""
    out = {}
    base = f"/proc/{pid}/fd"
    for name in os.listdir(base):
        try:
            target = os.readlink(os.path.join(base, name))
        except OSError:
            continue
        m = re.fullmatch(r"socket:\[(\d+)\]", target)
        if m:
            out[int(name)] = int(m.group(1))
    return out


def _read_net_table(path: str) -> list[list[str]]:
    try:
        with open(path) as fh:
            lines = fh.read().splitlines()[1:]
    except FileNotFoundError:
        return []
    return [ln.split() for ln in lines if ln.strip()]


def tcp_inodes() -> dict[int, tuple[str, int, str]]:
    """{inode: (local address hex, local port, state hex)} for all TCP sockets
    (IPv4 and IPv6) of this network namespace."""
    out = {}
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        for cols in _read_net_table(path):
            local, state, inode = cols[1], cols[3], int(cols[9])
            addr, port = local.rsplit(":", 1)
            out[inode] = (addr, int(port, 16), state)
    return out


TCP_LISTEN = "0A"


def listen_inode(port: int) -> int:
    """The inode of the TCP LISTEN socket on ``port``."""
    for inode, (_, p, state) in tcp_inodes().items():
        if p == port and state == TCP_LISTEN and inode != 0:
            return inode
    raise LookupError(f"no LISTEN socket on port {port}")


def unix_inodes() -> set[int]:
    return {int(cols[6]) for cols in _read_net_table("/proc/net/unix") if len(cols) >= 7}


def assert_worker_owns_only_its_channel(pid: int, others: list[int], master: int) -> int:
    """An idle worker: no TCP socket at all, exactly two unix sockets (its channel end and
    its inbox end), shared with no other worker; the master holds the inbox end too (to take
    back unread handoffs), never the channel end. Returns the channel end's inode."""
    socks = set(socket_inodes(pid).values())
    tcp = socks & set(tcp_inodes())
    assert not tcp, f"idle worker {pid} holds TCP sockets {sorted(tcp)} (listener or a client)"
    unix = socks & unix_inodes()
    assert len(unix) == 2, f"worker {pid} holds {len(unix)} unix sockets, not 2: {sorted(unix)}"
    for other in others:
        if other != pid:
            shared = unix & set(socket_inodes(other).values())
            assert not shared, f"workers {pid} and {other} share channel sockets {shared}"
    with_master = unix & set(socket_inodes(master).values())
    assert len(with_master) == 1, (
        f"the master holds {len(with_master)} of worker {pid}'s ends, not just its inbox")
    assert socks == unix, f"worker {pid} holds other sockets: {sorted(socks - unix)}"
    return next(iter(unix - with_master))
