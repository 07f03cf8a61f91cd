"""The built-in load generator: asyncio, HTTP/1.1 over TCP to 127.0.0.1, no dependencies.

Two modes:

- **closed loop** (:func:`closed_loop`): ``connections`` clients, each sending its next request
  as soon as the previous answer arrived (what wrk does); :func:`burst_loop` opens their
  connections a few at a time. Throughput is what the server can
  take; latency is only measured for requests actually sent, so a stalled server hides its
  stall ("coordinated omission").
- **open loop** (:func:`open_loop`): requests are due at a fixed rate, at ``t0 + i / rate``,
  whether or not earlier ones were answered, and each latency is measured from that *intended*
  send time. A request that had to wait for a free client connection, or for the event loop,
  is charged that wait, which corrects for coordinated omission.

Responses are parsed just enough to find their end (``Content-Length``, chunked, or close),
their status and their ``X-Worker-Pid`` header.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field

#: Largest response head accepted.
MAX_HEAD = 64 * 1024


class ResponseError(Exception):
    """The server's answer was not a well-formed HTTP/1.x response."""


@dataclass
class Response:
    """The parts of a response the bench looks at."""

    status: int
    worker_pid: int | None
    keep_alive: bool
    body_bytes: int


@dataclass
class LoadResult:
    """Outcome of one load run. Latencies are in seconds, in completion order."""

    duration_s: float
    latencies_s: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    pids: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    #: Open loop: requests that were due but never sent or answered before the end.
    late: int = 0
    #: Connections opened.
    connects: int = 0
    #: Closed loop: responses counted per client (one keep-alive connection each while
    #: nothing fails), in client order.
    per_connection: list[int] = field(default_factory=list)

    @property
    def requests(self) -> int:
        """Responses received (any status)."""
        return sum(self.statuses.values())

    @property
    def requests_per_s(self) -> float:
        """Responses per second of the run."""
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0


def build_request(path: str, *, keep_alive: bool, host: str = "127.0.0.1") -> bytes:
    """A GET request for ``path`` as bytes."""
    connection = "keep-alive" if keep_alive else "close"
    return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: fdpass-bench\r\n"
            f"Connection: {connection}\r\n\r\n").encode("latin-1")


class Client:
    """One client connection able to send requests one after the other."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1") -> Client:
        """Open a connection to ``host:port``."""
        reader, writer = await asyncio.open_connection(host, port, limit=MAX_HEAD)
        return cls(reader, writer)

    async def request(self, raw: bytes) -> Response:
        """Send ``raw`` and read the whole response."""
        self.writer.write(raw)
        await self.writer.drain()
        return await read_response(self.reader)

    def close(self) -> None:
        """Close without waiting (the bench never needs a graceful close)."""
        self.writer.close()


async def read_response(reader: asyncio.StreamReader) -> Response:
    """Read one response (head and body) from ``reader``; skips interim 1xx responses."""
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            raise ResponseError("connection closed before a complete response head") from exc
        except asyncio.LimitOverrunError as exc:
            raise ResponseError("response head too large") from exc
        lines = head[:-4].split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise ResponseError(f"bad status line {lines[0][:80]!r}")
        status = int(parts[1])
        if 100 <= status < 200:
            continue
        break
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise ResponseError(f"bad header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    connection = headers.get(b"connection", b"").lower()
    keep_alive = (b"close" not in connection
                  and (parts[0] == b"HTTP/1.1" or b"keep-alive" in connection))
    pid_text = headers.get(b"x-worker-pid", b"")
    pid = int(pid_text) if pid_text.isdigit() else None
    size = 0
    if status in (204, 304):
        pass
    elif b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        size = await _read_chunked(reader)
    elif b"content-length" in headers:
        length = headers[b"content-length"]
        if not length.isdigit():
            raise ResponseError(f"bad Content-Length {length[:40]!r}")
        size = int(length)
        try:
            await reader.readexactly(size)
        except asyncio.IncompleteReadError as exc:
            raise ResponseError("connection closed inside the body") from exc
    else:
        size = len(await reader.read())  # delimited by the end of the connection
        keep_alive = False
    return Response(status, pid, keep_alive, size)


async def _read_chunked(reader: asyncio.StreamReader) -> int:
    total = 0
    try:
        while True:
            line = await reader.readuntil(b"\r\n")
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise ResponseError(f"bad chunk size {size_text[:20]!r}") from None
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass  # trailers
                return total
            await reader.readexactly(size + 2)
            total += size
    except asyncio.IncompleteReadError as exc:
        raise ResponseError("connection closed inside a chunked body") from exc


def _error_kind(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, ResponseError):
        return "protocol"
    if isinstance(exc, ConnectionRefusedError):
        return "connect"
    return "read"


async def _exchange(client: Client | None, port: int, raw: bytes, result: LoadResult
                    ) -> tuple[Client, Response]:
    """Connect if ``client`` is None (counted in ``result``), then send ``raw`` and read the
    response."""
    if client is None:
        client = await Client.connect(port)
        result.connects += 1
    try:
        return client, await client.request(raw)
    except BaseException:
        client.close()
        raise


async def closed_loop(port: int, *, path: str = "/", connections: int = 16,
                      duration_s: float = 3.0, keep_alive: bool = True,
                      timeout_s: float = 5.0, finish_in_flight: bool = False) -> LoadResult:
    """``connections`` clients loop on ``GET path`` for ``duration_s`` seconds.

    ``timeout_s`` bounds one request, connecting included. By default only responses completed
    within the duration count and requests in flight at the end are abandoned. With
    ``finish_in_flight`` no request starts after the duration, but those already started are
    waited for (each at most ``timeout_s``) and counted: answered or ``timeout``. A failed
    request costs its client its connection (it reconnects).
    """
    loop = _Loop(port, build_request(path, keep_alive=keep_alive), keep_alive, timeout_s,
                 finish_in_flight, time.perf_counter() + duration_s,
                 LoadResult(duration_s=duration_s, per_connection=[0] * connections))
    tasks = [asyncio.create_task(loop.client(i)) for i in range(connections)]
    await _run_until(tasks, loop.deadline + (timeout_s + 1.0 if finish_in_flight else 0.0))
    return loop.result


async def burst_loop(port: int, *, path: str = "/", connections: int = 8, burst: int = 4,
                     duration_s: float = 3.0, timeout_s: float = 5.0) -> LoadResult:
    """Keep-alive clients like :func:`closed_loop`, their connections opened in bursts.

    The first ``burst`` clients connect at the same moment; the next burst starts once each
    client of the previous one got its first answer (or ``timeout_s`` passed), and so on
    until ``connections`` are open. Each client then loops on ``GET path`` over its own
    connection until ``duration_s`` after the first burst. This is how keep-alive traffic
    reaches a server (browsers and connection pools open a few connections at once and keep
    them), and what decides where an accepting worker class places each one.
    """
    loop = _Loop(port, build_request(path, keep_alive=True), True, timeout_s, False,
                 time.perf_counter() + duration_s,
                 LoadResult(duration_s=duration_s, per_connection=[0] * connections))
    tasks: list[asyncio.Task[None]] = []
    size = max(1, burst)
    for first in range(0, connections, size):
        indices = range(first, min(first + size, connections))
        answered = [asyncio.Event() for _ in indices]
        tasks += [asyncio.create_task(loop.client(i, event))
                  for i, event in zip(indices, answered, strict=True)]
        waits = [asyncio.create_task(e.wait()) for e in answered]
        left = min(timeout_s, loop.deadline - time.perf_counter())
        await asyncio.wait(waits, timeout=max(0.0, left))
        for w in waits:
            w.cancel()
    await _run_until(tasks, loop.deadline)
    return loop.result


@dataclass
class _Loop:
    """What the clients of one closed-loop run share."""

    port: int
    raw: bytes
    keep_alive: bool
    timeout_s: float
    finish_in_flight: bool
    deadline: float
    result: LoadResult

    async def client(self, index: int, answered: asyncio.Event | None = None) -> None:
        """Client ``index``: send, wait for the answer, repeat until the deadline; set
        ``answered`` at its first answer."""
        result, deadline = self.result, self.deadline
        client: Client | None = None
        try:
            while True:
                t0 = time.perf_counter()
                if self.finish_in_flight and t0 >= deadline:
                    return
                try:
                    live, response = await asyncio.wait_for(
                        _exchange(client, self.port, self.raw, result), self.timeout_s)
                except (OSError, asyncio.TimeoutError, ResponseError) as exc:
                    client = None  # _exchange closed it
                    if self.finish_in_flight or time.perf_counter() < deadline:
                        result.errors[_error_kind(exc)] += 1
                    await asyncio.sleep(0.01)  # do not spin on a refusing server
                    continue
                client = live
                t1 = time.perf_counter()
                if t1 > deadline and not self.finish_in_flight:
                    return
                result.latencies_s.append(t1 - t0)
                result.statuses[response.status] += 1
                result.per_connection[index] += 1
                if response.worker_pid is not None:
                    result.pids[response.worker_pid] += 1
                if answered is not None:
                    answered.set()
                if not (self.keep_alive and response.keep_alive):
                    client.close()
                    client = None
        finally:
            if client is not None:
                client.close()


async def open_loop(port: int, *, rate: float, path: str = "/", duration_s: float = 3.0,
                    keep_alive: bool = False, connections: int = 64,
                    timeout_s: float = 5.0) -> LoadResult:
    """``GET path`` at ``rate`` per second for ``duration_s``; latency from the intended time.

    At most ``connections`` requests are in flight; a request due while all are busy waits for
    one, and that wait counts in its latency. A request not answered within ``timeout_s`` of
    its intended send time counts as a ``timeout`` error; requests still pending
    ``timeout_s`` after the last one was due count as :attr:`LoadResult.late`.
    """
    if rate <= 0:
        raise ValueError(f"rate must be positive, got {rate}")
    raw = build_request(path, keep_alive=keep_alive)
    total = max(1, int(rate * duration_s))
    result = LoadResult(duration_s=duration_s)
    slots = asyncio.Semaphore(connections)
    idle: list[Client] = []
    start = time.perf_counter() + 0.01

    async def one(intended: float) -> None:
        async with slots:
            client = idle.pop() if idle else None
            try:
                left = intended + timeout_s - time.perf_counter()
                live, response = await asyncio.wait_for(
                    _exchange(client, port, raw, result), max(left, 0.001))
            except (OSError, asyncio.TimeoutError, ResponseError) as exc:
                result.errors[_error_kind(exc)] += 1
                return
            result.latencies_s.append(time.perf_counter() - intended)
            result.statuses[response.status] += 1
            if response.worker_pid is not None:
                result.pids[response.worker_pid] += 1
            if keep_alive and response.keep_alive:
                idle.append(live)
            else:
                live.close()

    tasks: list[asyncio.Task[None]] = []
    try:
        for i in range(total):
            intended = start + i / rate
            delay = intended - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(intended)))
        last_due = start + (total - 1) / rate
        await _run_until(tasks, last_due + timeout_s)
        result.late = sum(1 for t in tasks if t.cancelled())
    finally:
        for task in tasks:
            task.cancel()
        for client in idle:
            client.close()
    return result


async def _run_until(tasks: list[asyncio.Task[None]], deadline: float) -> None:
    """Let ``tasks`` run until they finish or ``deadline`` (perf_counter) passes; cancel the
    rest and wait for them to unwind."""
    if tasks:
        await asyncio.wait(tasks, timeout=max(0.0, deadline - time.perf_counter()))
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
