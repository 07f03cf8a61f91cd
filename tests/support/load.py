"""A bounded background load for fault tests: counts every request sent and answered.

Each client thread keeps one keep-alive connection and sends requests back to back until
stopped (or ``max_seconds`` pass). A request is *lost* when it was sent and no complete
response came back; a connection the server closes cleanly after a response is simply
reopened and does not count.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field

from .http import IncompleteResponse, RawHTTPConnection
from .wait import poll


@dataclass
class LoadResult:
    sent: int = 0
    answered: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)
    pids: set[str] = field(default_factory=set)
    reconnects: int = 0


class Load:
    """``with Load(port, clients=16): ...`` runs traffic while the body runs."""

    def __init__(self, port: int, clients: int = 16, target: str = "/sleep?s=0.05",
                 max_seconds: float = 60.0) -> None:
        self.port = port
        self.clients = clients
        self.target = target
        self.max_seconds = max_seconds
        self.result = LoadResult()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> Load:
        for _ in range(self.clients):
            t = threading.Thread(target=self._client, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_answered(self, count: int, timeout: float = 15.0) -> None:
        """Block until at least ``count`` more answers arrived (bounded)."""
        target = self.result.answered + count
        if not poll(lambda: self.result.answered >= target, timeout=timeout):
            raise AssertionError(f"load stalled: {self.result}")

    def stop(self) -> LoadResult:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)
        return self.result

    def _client(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        conn: RawHTTPConnection | None = None
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                if conn is None:
                    try:
                        conn = RawHTTPConnection("127.0.0.1", self.port, timeout=30)
                    except OSError as exc:
                        self._record_loss(f"connect: {exc!r}")
                        time.sleep(0.05)  # back off: a refused client does not spin
                        continue
                with self._lock:
                    self.result.sent += 1
                try:
                    resp = conn.request("GET", self.target, {"Host": "127.0.0.1"})
                except (IncompleteResponse, OSError) as exc:
                    self._record_loss(f"request: {exc!r}")
                    conn.close()
                    conn = None
                    continue
                with self._lock:
                    self.result.answered += 1
                    self.result.statuses[resp.status] = self.result.statuses.get(
                        resp.status, 0) + 1
                    pid = resp.header("X-Worker-Pid")
                    if pid:
                        self.result.pids.add(pid)
                if not resp.keep_alive:
                    conn.close()
                    conn = None
                    with self._lock:
                        self.result.reconnects += 1
        finally:
            if conn is not None:
                conn.close()

    def _record_loss(self, what: str) -> None:
        with self._lock:
            self.result.lost.append(what)


def connect_refused(port: int) -> bool:
    """True if nothing accepts connections on ``port`` any more."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except OSError:
        return True
