"""CPU time from /proc (issue 11 item 1), requests per connection (issue 15 item 3)."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from gunicorn_fdpass.bench import cpu, loadgen, stats
from tests.support.wait import poll


def test_parse_stat_counts_fields_from_the_last_parenthesis() -> None:
    # Fields 3 to 13, then utime=7 and stime=5 (fields 14 and 15), then more.
    rest = b"S " + b" ".join(str(n).encode() for n in range(4, 14)) + b" 7 5 1 1 20 0"
    assert cpu.parse_stat(b"99 (python3) " + rest) == 12
    # The command name may hold spaces and parentheses.
    assert cpu.parse_stat(b"1234 (odd ) (x)) " + rest) == 12


def test_process_ticks_follow_cpu_use() -> None:
    start = cpu.process_ticks(os.getpid())
    assert start is not None and start >= 0

    def burned() -> bool:
        end = time.thread_time() + 0.02
        while time.thread_time() < end:
            pass
        ticks = cpu.process_ticks(os.getpid())
        return ticks is not None and ticks > start

    assert poll(burned, timeout=10.0)
    assert cpu.process_ticks(2 ** 22 + 12345) is None  # no such process
    busy = cpu.machine_busy_ticks()
    assert busy is not None and busy > 0


def test_usage_turns_ticks_into_microseconds() -> None:
    before = cpu.Sample(master=100, workers={11: 50, 12: 70}, machine=1000)
    # Worker 12 used 10 ticks, 11 used 30, 13 appeared (a restart) and used 5.
    after = cpu.Sample(master=110, workers={11: 80, 12: 80, 13: 5}, machine=1200)
    tick_us = cpu.TICK_S * 1e6
    u = cpu.usage(before, after, requests=1000, connections=10)
    assert (u["master_ticks"], u["worker_ticks"], u["machine_ticks"]) == (10, 45, 200)
    assert u["master_us_per_req"] == pytest.approx(10 * tick_us / 1000)
    assert u["master_us_per_conn"] == pytest.approx(10 * tick_us / 10)
    assert u["worker_us_per_req"] == pytest.approx(45 * tick_us / 1000)
    assert u["server_us_per_req"] == pytest.approx(55 * tick_us / 1000)
    assert u["machine_us_per_req"] == pytest.approx(200 * tick_us / 1000)
    assert u["master_ceiling_per_s"] == pytest.approx(1e6 / (10 * tick_us / 1000))
    idle = cpu.usage(cpu.Sample(5, {}), cpu.Sample(5, {}), requests=10, connections=10)
    assert idle["master_us_per_req"] == 0.0 and idle["master_ceiling_per_s"] is None
    # A stray tick or two over many requests says nothing of a ceiling (not 5 million/s).
    stray = cpu.usage(cpu.Sample(5, {}), cpu.Sample(6, {}), requests=50_000, connections=16)
    assert stray["master_us_per_req"] == pytest.approx(tick_us / 50_000)
    assert stray["master_ceiling_per_s"] is None
    few = cpu.usage(cpu.Sample(0, {}), cpu.Sample(cpu.CEILING_MIN_TICKS, {}),
                    requests=1000, connections=1000)
    assert few["master_ceiling_per_s"] == pytest.approx(1e6 / few["master_us_per_req"])
    none = cpu.usage(cpu.Sample(None), cpu.Sample(None), requests=0, connections=0)
    assert none["master_us_per_req"] is None and none["worker_us_per_req"] is None


def test_spread() -> None:
    assert stats.spread([5, 5, 5]) == {"min": 5, "max": 5, "mean": 5.0, "cv": 0.0}
    s = stats.spread([2, 6])
    assert (s["min"], s["max"], s["mean"]) == (2, 6, 4.0) and s["cv"] == pytest.approx(0.5)
    assert stats.spread([0, 0])["cv"] is None
    assert stats.spread([])["mean"] is None


def test_closed_loop_counts_requests_per_connection() -> None:
    """The first connection is answered at once, the others after 20 ms: the counts differ."""
    state = {"first": True}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        fast, state["first"] = state["first"], False
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                if not fast:
                    await asyncio.sleep(0.02)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def go() -> loadgen.LoadResult:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        try:
            port = server.sockets[0].getsockname()[1]
            return await loadgen.closed_loop(port, connections=3, duration_s=0.3)
        finally:
            server.close()
            await server.wait_closed()

    result = asyncio.run(go())
    assert len(result.per_connection) == 3 and result.connects == 3
    assert sum(result.per_connection) == result.requests
    assert max(result.per_connection) > 3 * min(result.per_connection) > 0
