"""Helpers for the fd-hygiene and deployment-form integration tests.

* small /proc and polling helpers (fd counts, TCP sockets of a process, uid/gid),
* :class:`Launched`: a gunicorn started by hand (systemd socket activation, ``--daemon``)
  for deployment forms the :class:`~tests.support.server.GunicornServer` harness cannot own,
* :func:`mixed_load`: a fast, bounded generator of mixed client connections (several client
  processes running this module as a script, raw non-blocking sockets under asyncio).

Only processes started here are ever signalled, always by their pid.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from . import http
from .server import REPO_ROOT, _read_net_table, pid_alive, socket_inodes, tcp_inodes
from .wait import poll

T = TypeVar("T")

LISTENING_RE = re.compile(r"Listening at: (\S+)")


# -- polling and /proc ----------------------------------------------------------------

def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def stable_fd_count(pid: int, samples: int = 5, interval: float = 0.03) -> int:
    """The smallest of a few fd counts taken a moment apart.

    The master opens one short-lived fd once a second (the stats file, written through a
    temp file); a sample may catch it. A leak is permanent, so it shows in every sample.
    """
    counts = []
    for _ in range(samples):
        counts.append(fd_count(pid))
        time.sleep(interval)
    return min(counts)


def tcp_socket_inodes(pid: int) -> set[int]:
    """Inodes of the TCP sockets (v4 and v6, any state) ``pid`` holds."""
    return set(socket_inodes(pid).values()) & set(tcp_inodes())


def proc_ids(pid: int) -> tuple[list[int], list[int]]:
    """(Uid, Gid) lines of /proc/<pid>/status: real, effective, saved, filesystem."""
    uid: list[int] = []
    gid: list[int] = []
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("Uid:"):
                uid = [int(x) for x in line.split()[1:]]
            elif line.startswith("Gid:"):
                gid = [int(x) for x in line.split()[1:]]
    return uid, gid


def children(pid: int) -> list[int]:
    """Live (non-zombie) children of ``pid``."""
    kids: set[int] = set()
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/children") as fh:
                    kids.update(int(x) for x in fh.read().split())
            except OSError:
                continue
    except FileNotFoundError:
        return []
    return sorted(k for k in kids if pid_alive(k))


def listening_urls(log: str) -> list[str]:
    """Every address of every "Listening at:" line (comma-separated in Gunicorn's log)."""
    out: list[str] = []
    for m in LISTENING_RE.finditer(log):
        out += [u for u in m.group(1).split(",") if u]
    return out


def port_of(url: str) -> int:
    """Port of ``http://host:port`` / ``http://[::1]:port``."""
    return int(url.rsplit(":", 1)[1])


def ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def unix_listen_inode(path: str) -> int:
    """Inode of the listening unix socket bound to ``path`` (from /proc/net/unix)."""
    for cols in _read_net_table("/proc/net/unix"):
        # Num RefCount Protocol Flags Type St Inode [Path]; Flags 00010000 = __SO_ACCEPTCON
        if len(cols) >= 8 and cols[7] == path and int(cols[3], 16) & 0x10000:
            return int(cols[6])
    raise LookupError(f"no listening unix socket at {path}")


def server_side_inode(server_port: int, client_port: int) -> int:
    """Inode of the accepted (server-side) TCP socket of the connection from local
    ``client_port`` to ``server_port``; 0 if no process holds it."""
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        for cols in _read_net_table(path):
            local_port = int(cols[1].rsplit(":", 1)[1], 16)
            remote_port = int(cols[2].rsplit(":", 1)[1], 16)
            if local_port == server_port and remote_port == client_port:
                return int(cols[9])
    raise LookupError(f"no server-side socket for client port {client_port}")


class UnixHTTPConnection(http.RawHTTPConnection):
    """:class:`~tests.support.http.RawHTTPConnection` over a unix socket."""

    def __init__(self, path: str, timeout: float = http.DEFAULT_TIMEOUT) -> None:
        self.host = path
        self.port = 0
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except OSError:
            self.sock.close()
            raise
        self.buf = bytearray()
        self.eof = False


def unix_get(path: str, target: str = "/", timeout: float = http.DEFAULT_TIMEOUT
             ) -> http.Response:
    with UnixHTTPConnection(path, timeout=timeout) as conn:
        return conn.request("GET", target, {"Host": "localhost"})


def wait_for_file_text(path: str | os.PathLike[str], pattern: str, timeout: float = 15.0
                       ) -> re.Match[str]:
    """Wait until ``pattern`` (regex) appears in the text file ``path``."""
    rx = re.compile(pattern)

    def found() -> re.Match[str] | None:
        try:
            return rx.search(Path(path).read_text(errors="replace"))
        except FileNotFoundError:
            return None
    m = poll(found, timeout=timeout, interval=0.05)
    if not m:
        raise AssertionError(f"{pattern!r} not in {path} after {timeout}s")
    return m


# -- a gunicorn the harness cannot own ------------------------------------------------

class Launched:
    """A gunicorn command started by hand, in its own session, output to ``log_path``.

    ``stop()`` TERMs exactly the pids this object knows (the launched process, or the pid
    it is told the master has, e.g. from a pid file) and SIGKILLs them and their children
    only if they outlive the bound.
    """

    def __init__(self, cmd: Sequence[str], log_path: str | os.PathLike[str],
                 env: Mapping[str, str] | None = None, cwd: str | os.PathLike[str] | None = None,
                 pass_fds: Sequence[int] = (), preexec_fn: Callable[[], None] | None = None,
                 close_fds: bool = True) -> None:
        self.log_path = Path(log_path)
        full_env = os.environ.copy()
        pp = full_env.get("PYTHONPATH")
        full_env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + pp if pp else "")
        full_env["PYTHONUNBUFFERED"] = "1"
        full_env.pop("GUNICORN_CMD_ARGS", None)
        full_env.update(env or {})
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                list(cmd), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=full_env, cwd=str(cwd or REPO_ROOT), pass_fds=tuple(pass_fds),
                preexec_fn=preexec_fn, close_fds=close_fds, start_new_session=True)
        self.master_pid = self.proc.pid
        self.worker_class = "gunicorn_fdpass.Worker"  # for tests.conftest.attach_server
        self._known: set[int] = set()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        try:
            return wait_for_file_text(self.log_path, pattern, timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}:\n{self.log_text()}") from None

    def workers(self) -> list[int]:
        kids = children(self.master_pid)
        self._known.update(kids)
        return kids

    def wait_for_workers(self, count: int, timeout: float = 15.0) -> list[int]:
        booted = re.compile(r"Booting worker with pid: (\d+)")

        def ready() -> list[int]:
            pids = {int(p) for p in booted.findall(self.log_text())}
            live = [p for p in self.workers() if p in pids]
            return live if len(live) >= count else []
        pids = poll(ready, timeout=timeout, interval=0.05)
        if not pids:
            raise AssertionError(f"{count} workers did not boot within {timeout}s:\n"
                                 f"{self.log_text()}")
        return pids

    def stop(self, timeout: float = 10.0) -> bool:
        """TERM the master; True if it (and its workers) exited within ``timeout``."""
        pid = self.master_pid
        if pid_alive(pid):
            self.workers()  # remember them, to clean up if the master dies first
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        clean = bool(poll(lambda: not pid_alive(pid) and not any(
            pid_alive(p) for p in self._known), timeout=timeout, interval=0.05))
        if not clean:
            for p in [pid, *self._known]:
                if pid_alive(p):
                    try:
                        os.kill(p, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        if self.proc.poll() is None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        return clean


def gunicorn_cmd(*args: str, script: bool = False) -> list[str]:
    """A gunicorn command line with our worker. ``script``: run the ``gunicorn`` console
    script instead of ``python -m gunicorn`` (whose USR2 re-exec runs
    ``gunicorn/__main__.py`` as a script, with Gunicorn's package directory first on
    ``sys.path``, where ``gunicorn/http`` shadows the standard library's ``http``)."""
    start = ([str(Path(sys.executable).parent / "gunicorn")] if script
             else [sys.executable, "-m", "gunicorn"])
    return [*start, "--no-control-socket", "-k", "gunicorn_fdpass.Worker",
            "--error-logfile", "-", *args]


# -- mixed connection load ----------------------------------------------------------

#: Kinds of client connections :func:`mixed_load` makes, with their weights.
KINDS: dict[str, int] = {
    "close": 2,        # one request, then the client closes (the master parks, sees EOF)
    "conn_close": 2,   # one request with "Connection: close": the server closes
    "keepalive": 1,    # 2-5 requests on one connection, then close
    "reset": 3,        # half a request head, then a reset (SO_LINGER 0)
    "idle": 4,         # connect, send nothing, close
    "half": 3,         # half a request head, then close
}

_REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
_REQUEST_CLOSE = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
_HALF = b"GET / HTTP/1.1\r\nHost: 127.0"
_LINGER0 = struct.pack("ii", 1, 0)
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


async def _read_response(loop: asyncio.AbstractEventLoop, sock: socket.socket,
                         buf: bytearray) -> bool:
    """Read one response to GET / (Content-Length framed). False on EOF/garbage."""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = bytes(buf[:end]).lower()
            if not head.startswith(b"http/1.1 200"):
                return False
            m = re.search(rb"\r\ncontent-length: *(\d+)", head)
            if not m:
                return False
            total = end + 4 + int(m.group(1))
            while len(buf) < total:
                data = await loop.sock_recv(sock, 65536)
                if not data:
                    return False
                buf += data
            del buf[:total]
            return True
        data = await loop.sock_recv(sock, 65536)
        if not data:
            return False
        buf += data


async def _one(loop: asyncio.AbstractEventLoop, port: int, kind: str, src: str,
               rng: random.Random) -> bool:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((src, 0))  # many source addresses: many more ephemeral ports
        await loop.sock_connect(sock, ("127.0.0.1", port))
        buf = bytearray()
        if kind == "close":
            await loop.sock_sendall(sock, _REQUEST)
            return await _read_response(loop, sock, buf)
        if kind == "conn_close":
            await loop.sock_sendall(sock, _REQUEST_CLOSE)
            if not await _read_response(loop, sock, buf):
                return False
            return await loop.sock_recv(sock, 1) == b""  # the server closed
        if kind == "keepalive":
            for _ in range(rng.randint(2, 5)):
                await loop.sock_sendall(sock, _REQUEST)
                if not await _read_response(loop, sock, buf):
                    return False
            return True
        if kind == "reset":
            await loop.sock_sendall(sock, _HALF)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER0)
            return True
        if kind == "half":
            await loop.sock_sendall(sock, _HALF)
            return True
        return True  # idle
    except OSError:
        return False
    finally:
        sock.close()


async def _run_load(port: int, count: int, concurrency: int, seed: int, src: str,
                    time_limit: float, mix: Mapping[str, int]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    names = list(mix)
    weights = [mix[k] for k in names]
    kinds = rng.choices(names, weights, k=count)
    done: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    deadline = time.monotonic() + time_limit
    it = iter(kinds)

    async def runner() -> None:
        for kind in it:
            if time.monotonic() > deadline:
                return
            if await _one(loop, port, kind, src, rng):
                done[kind] += 1
            else:
                failed[kind] += 1

    await asyncio.gather(*(runner() for _ in range(concurrency)))
    return {"done": dict(done), "failed": dict(failed)}


def _client_main(argv: Sequence[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--src", default="127.0.0.1")
    p.add_argument("--time-limit", type=float, default=60.0)
    p.add_argument("--mix", default=json.dumps(KINDS))
    a = p.parse_args(argv)
    start = time.monotonic()
    result = asyncio.run(_run_load(a.port, a.count, a.concurrency, a.seed, a.src, a.time_limit,
                                   json.loads(a.mix)))
    result["seconds"] = time.monotonic() - start
    print(json.dumps(result), flush=True)


def mixed_load(port: int, total: int, processes: int = 3, concurrency: int = 32,
               time_limit: float = 60.0, mix: Mapping[str, int] | None = None
               ) -> dict[str, Any]:
    """Make ``total`` mixed connections (see :data:`KINDS`) to 127.0.0.1:``port`` from
    ``processes`` client processes, each bounded by ``time_limit`` seconds. ``mix``: kinds
    and weights (default :data:`KINDS`).

    Returns ``{"done": Counter, "failed": Counter, "seconds": wall time}``; the caller checks
    that the count was reached.
    """
    per = [total // processes + (1 if i < total % processes else 0) for i in range(processes)]
    env = os.environ.copy()
    pp = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + pp if pp else "")
    start = time.monotonic()
    procs = [subprocess.Popen(
        [sys.executable, "-m", "tests.support.deploy", "--port", str(port), "--count", str(n),
         "--concurrency", str(concurrency), "--seed", str(i), "--src", f"127.0.{i + 1}.1",
         "--time-limit", str(time_limit), "--mix", json.dumps(dict(mix or KINDS))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(REPO_ROOT), env=env)
        for i, n in enumerate(per)]
    done: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    errors = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=time_limit + 30)
            if proc.returncode != 0:
                errors.append(err.decode(errors="replace")[-2000:])
                continue
            result = json.loads(out)
            done.update(result["done"])
            failed.update(result["failed"])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if errors:
        raise RuntimeError("load client failed:\n" + "\n".join(errors))
    return {"done": done, "failed": failed, "seconds": time.monotonic() - start}


if __name__ == "__main__":
    _client_main(sys.argv[1:])
