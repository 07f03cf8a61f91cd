"""Starting and stopping the Gunicorn masters under test, on 127.0.0.1 only.

Each server gets a listening socket made here (127.0.0.1, port 0) and handed over with
``--bind fd://N``, so the port is known before Gunicorn starts and nothing races for it. Every
master runs in its own session (process group); :meth:`Server.stop` sends SIGTERM to that
master, waits a bounded time, then SIGKILLs that one process group. No other process is ever
signalled.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

_BOOT_RE = re.compile(r"Booting worker with pid: (\d+)")


#: Column names of uvicorn's worker classes (``uvicorn_worker.X``, or the older
#: ``uvicorn.workers.X``).
_UVICORN_LABELS = {"UvicornWorker": "uvicorn", "UvicornH11Worker": "uvicorn-h11"}


class ServerError(RuntimeError):
    """A server did not start or did not answer; the message ends with its log."""


@dataclass(frozen=True)
class WorkerSpec:
    """A worker class to compare: ``NAME`` or ``NAME@THREADS`` on the command line."""

    worker_class: str
    threads: int | None = None

    @property
    def label(self) -> str:
        """Short column name: ``sync``, ``gthread/4``, ``fdpass``, ``fdpass/4``, ``uvicorn``,
        ``uvicorn-h11``; the class name as given otherwise."""
        name = self.worker_class
        short = name.rsplit(".", 1)[-1]
        if "fdpass" in name.lower():
            name = "fdpass"  # its WSGI and ASGI classes never meet in one run (one app kind)
        elif name.startswith("egg:gunicorn#"):
            name = name.split("#", 1)[1]
        elif name.startswith("uvicorn") and short in _UVICORN_LABELS:
            name = _UVICORN_LABELS[short]
        return f"{name}/{self.threads}" if self.threads else name

    @classmethod
    def parse(cls, text: str, default_threads: int | None = None) -> WorkerSpec:
        """``gthread@4`` -> (gthread, 4); ``gthread`` -> (gthread, ``default_threads``)."""
        name, sep, threads = text.strip().partition("@")
        if not name:
            raise ValueError(f"empty worker class in {text!r}")
        if sep:
            if not threads.isdigit() or int(threads) < 1:
                raise ValueError(f"threads must be a positive integer in {text!r}")
            return cls(name, int(threads))
        if name == "gthread" and default_threads:
            return cls(name, default_threads)
        return cls(name, None)


def server_env(cwd: str) -> dict[str, str]:
    """The environment of every process started to serve or inspect the app: this one's,
    with ``cwd`` first on ``PYTHONPATH`` and no ``GUNICORN_CMD_ARGS`` (which would change
    every server behind the bench's back)."""
    env = os.environ.copy()
    env.pop("GUNICORN_CMD_ARGS", None)
    env["PYTHONPATH"] = cwd + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class Server:
    """One Gunicorn master serving ``app`` with one worker class; a context manager."""

    def __init__(self, app: str, spec: WorkerSpec, workers: int, *,
                 extra_args: Sequence[str] = (), cwd: str | None = None,
                 ready_timeout: float = 20.0, keepalive: float | None = None) -> None:
        self.app = app
        self.spec = spec
        self.workers = workers
        self.extra_args = list(extra_args)
        self.cwd = cwd or os.getcwd()
        self.ready_timeout = ready_timeout
        self.keepalive = keepalive
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._tmpdir = tempfile.mkdtemp(prefix="fdpass-bench-")
        self.log_path = os.path.join(self._tmpdir, "gunicorn.log")

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL, without a trailing slash."""
        return f"http://127.0.0.1:{self.port}"

    def command(self, fd: int) -> list[str]:
        """The gunicorn command line for a listener inherited as ``fd``."""
        cmd = [sys.executable, "-m", "gunicorn", "--bind", f"fd://{fd}", "--no-control-socket",
               "-k", self.spec.worker_class, "-w", str(self.workers), "--log-level", "info",
               "--error-logfile", "-", "--graceful-timeout", "2"]
        if self.spec.threads:
            cmd += ["--threads", str(self.spec.threads)]
        if self.keepalive is not None:
            cmd += ["--keep-alive", f"{self.keepalive:g}"]
        return [*cmd, *self.extra_args, self.app]

    def start(self) -> None:
        """Start the master and wait until every worker booted and ``GET /`` is answered."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", 0))
            listener.listen(2048)
            self.port = listener.getsockname()[1]
            listener.set_inheritable(True)
            env = server_env(self.cwd)
            with open(self.log_path, "wb") as log:
                self.proc = subprocess.Popen(
                    self.command(listener.fileno()), stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT, pass_fds=(listener.fileno(),),
                    start_new_session=True, cwd=self.cwd, env=env)
        finally:
            listener.close()  # the master holds its own copy
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while len(self.booted_pids()) < self.workers:
            self._check_alive()
            if time.monotonic() > deadline:
                raise ServerError(f"{self.spec.label}: workers did not boot within "
                                  f"{self.ready_timeout:.0f}s\n{self.log_tail()}")
            time.sleep(0.05)
        if not self.wait_healthy(max(1.0, deadline - time.monotonic())):
            raise ServerError(f"{self.spec.label}: no answer to GET / within "
                              f"{self.ready_timeout:.0f}s\n{self.log_tail()}")

    def wait_healthy(self, timeout: float) -> bool:
        """Whether ``GET /`` gets a complete response within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if probe(self.port, min(left, 2.0)):
                return True
            time.sleep(0.05)

    def _check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise ServerError(f"{self.spec.label}: gunicorn exited ({code})\n{self.log_tail()}")

    def booted_pids(self) -> list[int]:
        """Pids of every worker booted so far, from the log."""
        try:
            text = Path(self.log_path).read_text(errors="replace")
        except FileNotFoundError:
            return []
        return [int(pid) for pid in _BOOT_RE.findall(text)]

    def worker_pids(self) -> list[int]:
        """The master's live child processes (its workers), from ``/proc``; log order otherwise."""
        if self.proc is None:
            return []
        children: set[int] = set()
        try:
            for task in os.listdir(f"/proc/{self.proc.pid}/task"):
                try:
                    with open(f"/proc/{self.proc.pid}/task/{task}/children") as fh:
                        children.update(int(x) for x in fh.read().split())
                except OSError:
                    continue
        except OSError:
            return self.booted_pids()[-self.workers:]
        return sorted(children)

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the server's log."""
        try:
            return Path(self.log_path).read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the master and wait; SIGKILL its process group if anything is left.

        The group id is the master's pid (``start_new_session``). It is only signalled while
        the master is unreaped (so the id cannot have been reused) or while a worker we saw,
        still in that group, is alive.
        """
        proc = self.proc
        if proc is None:
            return
        workers = self.worker_pids()
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # master not reaped yet: the group is ours
                proc.wait(5)
                return
        if any(_in_group(pid, proc.pid) for pid in workers):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _in_group(pid: int, pgid: int) -> bool:
    try:
        return os.getpgid(pid) == pgid
    except ProcessLookupError:
        return False


def probe(port: int, timeout: float) -> bool:
    """One ``GET /`` on a new connection; True if a complete status line came back."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            data = b""
            while b"\r\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
            return data.startswith(b"HTTP/1.")
    except OSError:
        return False
