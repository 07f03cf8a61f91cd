"""The comparison tool (``python -m gunicorn_fdpass.bench``): statistics, parsers, load
generator, and short real runs of every scenario against all three worker classes."""

from __future__ import annotations

import asyncio
import json
import math
import re
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gunicorn_fdpass.bench import cli, loadgen, stats, wrk
from gunicorn_fdpass.bench.cpu import CEILING_MIN_TICKS
from gunicorn_fdpass.bench.scenarios import SCENARIO_NAMES, Headline, default_names
from gunicorn_fdpass.bench.servers import WorkerSpec

REPO_ROOT = Path(__file__).resolve().parents[2]
LABELS = ["sync", "gthread/4", "fdpass"]
CELL_RE = re.compile(r"^(-|[0-9.]+%?) \((-|[0-9.]+x)(, [0-9.]+-[0-9.]+)?\)$")
PROGRESS_RE = re.compile(r"^\[\s*(\d+)/(\d+)\] (\S+)\s+(\S+)\s+.* \((wrk|builtin[-a-z]*|-), "
                         r"[0-9.]+s\)$")


# -- statistics -------------------------------------------------------------------------------


def test_percentile_is_nearest_rank() -> None:
    samples = [15.0, 20.0, 35.0, 40.0, 50.0]
    assert stats.percentile(samples, 30) == 20.0
    assert stats.percentile(samples, 40) == 20.0
    assert stats.percentile(samples, 50) == 35.0
    assert stats.percentile(samples, 100) == 50.0
    assert stats.percentile(samples, 0) == 15.0
    assert stats.percentile(list(reversed(samples)), 50) == 35.0  # order does not matter
    ten = [float(i) for i in range(1, 101)]
    assert stats.percentile(ten, 99) == 99.0
    assert stats.percentile(ten, 99.5) == 100.0
    assert math.isnan(stats.percentile([], 50))
    with pytest.raises(ValueError):
        stats.percentile(samples, 101)


def test_summarize_converts_seconds_to_milliseconds() -> None:
    summary = stats.summarize([0.001, 0.002, 0.003, 0.004])
    assert summary.count == 4
    assert summary.p50 == pytest.approx(2.0)
    assert summary.max == pytest.approx(4.0)
    assert summary.mean == pytest.approx(2.5)
    empty = stats.summarize([]).as_dict()
    assert empty["count"] == 0 and empty["p99"] is None


def test_jain_index() -> None:
    assert stats.jain_index([5, 5, 5, 5]) == pytest.approx(1.0)
    assert stats.jain_index([10, 0, 0, 0]) == pytest.approx(0.25)
    assert stats.jain_index([1, 2, 3]) == pytest.approx(36 / 42)
    assert stats.jain_index([0, 0]) == 1.0
    assert math.isnan(stats.jain_index([]))
    with pytest.raises(ValueError):
        stats.jain_index([1, -1])


def test_ratio() -> None:
    assert stats.ratio(3.0, 2.0) == pytest.approx(1.5)
    assert stats.ratio(1.0, 0.0) is None
    assert stats.ratio(None, 2.0) is None
    assert stats.ratio(1.0, math.nan) is None


def test_format_value() -> None:
    assert stats.format_value(12345.6) == "12346"
    assert stats.format_value(123.45) == "123.5"
    assert stats.format_value(1.234) == "1.23"
    assert stats.format_value(0.001234) == "0.00123"
    assert stats.format_value(0.99998) == "1.000"  # Jain's index: not rounded up to "1"
    assert stats.format_value(0.9634) == "0.963"
    assert stats.format_value(99.6, "%") == "100%"
    assert stats.format_value(None) == "-"
    assert stats.format_value(math.nan) == "-"


def test_format_table_gives_value_and_ratio_per_column() -> None:
    rows = [
        stats.Row("close", "throughput", "req/s", "higher",
                  {"sync": 1000.0, "gthread/4": 1500.0, "fdpass": 2500.0}),
        stats.Row("hol", "fast p99", "ms", "lower",
                  {"sync": 200.0, "gthread/4": None, "fdpass": 2.0}),
        stats.Row("slow", "answered", "%", "higher",
                  {"sync": 0.0, "gthread/4": 0.0, "fdpass": 100.0}),
    ]
    text = stats.format_table(rows, LABELS, "sync")
    lines = text.splitlines()
    assert lines[0].split() == ["scenario", "metric", "better", *LABELS]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert len(lines) == 2 + len(rows) + 1
    assert "1000 (1.00x)" in lines[2] and "1500 (1.50x)" in lines[2]
    assert "2500 (2.50x)" in lines[2]
    assert "- (-)" in lines[3] and "2.00 (0.01x)" in lines[3]
    assert "0% (-)" in lines[4] and "100% (-)" in lines[4]  # no ratio against zero
    assert lines[-1].startswith("(value (ratio against sync)")
    # The columns line up: every row is as wide as the header's column layout.
    assert len({len(line) for line in lines[1:2]}) == 1
    assert all(line.endswith(")") for line in lines[2:-1])

    markdown = stats.format_markdown_table(rows, LABELS, "sync").splitlines()
    assert markdown[0] == "| scenario | metric | better | sync | gthread/4 | fdpass |"
    assert markdown[2] == ("| close | throughput (req/s) | higher | 1000 (1.00x) | "
                           "1500 (1.50x) | 2500 (2.50x) |")


def test_rounds_give_medians_and_ratios_taken_within_each_round() -> None:
    scenario = next(s for s in cli.SCENARIOS if s.name == "close")

    def result(label: str, n: int, rps: float | None) -> cli.RunResult:
        r = cli.RunResult("close", label, label, None, "app", "wrk", 1.0, round=n)
        if rps is None:
            r.error = "failed"
        else:
            r.metrics = {"requests_per_s": rps, "latency_ms": {"p99": 1.0}}
        return r
    # The machine is twice as fast in round 2; the ratio within each round is what matters.
    results = [result("sync", 1, 100.0), result("fdpass", 1, 80.0),
               result("sync", 2, 200.0), result("fdpass", 2, 180.0),
               result("sync", 3, 150.0), result("fdpass", 3, None)]
    row = cli.table_rows([scenario], results, ["sync", "fdpass"], "sync")[0]
    assert row.values == {"sync": 150.0, "fdpass": 130.0}  # medians of what completed
    assert row.round_ratios == {"sync": [1.0, 1.0, 1.0], "fdpass": [0.8, 0.9]}
    assert row.ratios("sync") == {"sync": 1.0, "fdpass": pytest.approx(0.85)}
    assert row.ratio_range("fdpass") == (0.8, 0.9)
    assert stats.format_cell(row, "fdpass", 0.85) == "130 (0.85x, 0.80-0.90)"
    assert stats.format_cell(row, "sync", 1.0) == "150 (1.00x)"  # no range to show
    one_round = cli.table_rows([scenario], results[:2], ["sync", "fdpass"], "sync")[0]
    assert one_round.round_ratios is None
    assert one_round.ratios("sync")["fdpass"] == pytest.approx(0.8)


def test_median() -> None:
    assert stats.median([]) is None
    assert stats.median([None, float("nan")]) is None
    assert stats.median([3.0, None, 1.0]) == 2.0
    assert stats.median([5.0, 1.0, 3.0]) == 3.0


def test_headline_reads_a_dotted_path() -> None:
    h = Headline("p99", "ms", "lower", "latency_ms.p99")
    assert h.value({"latency_ms": {"p99": 3.5}}) == 3.5
    assert h.value({"latency_ms": {"p99": None}}) is None
    assert h.value({"latency_ms": {}}) is None
    assert h.value({}) is None


def test_worker_spec_parsing() -> None:
    assert WorkerSpec.parse("sync") == WorkerSpec("sync", None)
    assert WorkerSpec.parse("gthread", default_threads=4) == WorkerSpec("gthread", 4)
    assert WorkerSpec.parse("gthread@8", default_threads=4) == WorkerSpec("gthread", 8)
    spec = WorkerSpec.parse("gunicorn_fdpass.Worker@4")
    assert spec == WorkerSpec("gunicorn_fdpass.Worker", 4) and spec.label == "fdpass/4"
    assert WorkerSpec.parse("gunicorn_fdpass.Worker").label == "fdpass"
    assert WorkerSpec.parse("egg:gunicorn#sync").label == "sync"
    assert WorkerSpec.parse("asgi").label == "asgi"
    assert WorkerSpec.parse("uvicorn_worker.UvicornWorker").label == "uvicorn"
    assert WorkerSpec.parse("uvicorn_worker.UvicornH11Worker").label == "uvicorn-h11"
    assert WorkerSpec.parse("uvicorn.workers.UvicornWorker").label == "uvicorn"
    assert WorkerSpec.parse("gunicorn_fdpass.ASGIWorker").label == "fdpass"
    assert WorkerSpec.parse("mypkg.workers.Custom").label == "mypkg.workers.Custom"
    for bad in ("@4", "gthread@0", "gthread@x"):
        with pytest.raises(ValueError):
            WorkerSpec.parse(bad)


# -- wrk output ------------------------------------------------------------------------------

WRK_PLAIN = """\
Running 1s test @ http://127.0.0.1:38599/
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   660.26us  238.41us   3.13ms   83.30%
    Req/Sec     5.53k   135.24     5.70k    72.73%
  Latency Distribution
     50%  642.00us
     75%  740.00us
     90%    0.85ms
     99%    1.68ms
  6052 requests in 1.10s, 1.00MB read
  Socket errors: connect 0, read 3, write 1, timeout 7
  Non-2xx or 3xx responses: 12
Requests/sec:   5501.86
Transfer/sec:      0.91MB
"""

WRK_WITH_SCRIPT = """\
Running 2s test @ http://127.0.0.1:40000/
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.00ms    1.00ms  40.00ms   90.00%
    Req/Sec     4.00k   100.00     4.20k    70.00%
  16000 requests in 2.00s, 2.00MB read
Requests/sec:   8000.00
Transfer/sec:      1.00MB
fdpass-bench summary requests=16000 duration_us=2000000 bytes=2000000 connect=0 read=0 \
write=0 status=2 timeout=0
fdpass-bench latency_us mean=2001.5 max=40000 p50=1500 p90=3000 p99=9000
fdpass-bench status 200 15998
fdpass-bench status 503 2
fdpass-bench pid 4242 9000
fdpass-bench pid 4243 7000
"""


def test_parse_plain_wrk_output() -> None:
    r = wrk.parse_output(WRK_PLAIN)
    assert r.requests == 6052
    assert r.duration_s == pytest.approx(1.10)
    assert r.requests_per_s == pytest.approx(6052 / 1.10)
    assert r.latency_ms["mean"] == pytest.approx(0.66026)
    assert r.latency_ms["max"] == pytest.approx(3.13)
    assert r.latency_ms["p50"] == pytest.approx(0.642)
    assert r.latency_ms["p90"] == pytest.approx(0.85)
    assert r.latency_ms["p99"] == pytest.approx(1.68)
    assert r.errors == {"connect": 0, "read": 3, "write": 1, "timeout": 7, "status": 12}
    assert r.socket_errors == 11
    assert r.non_2xx_3xx == 12
    assert r.statuses == {} and r.pids == {}


def test_parse_wrk_output_with_the_lua_lines() -> None:
    r = wrk.parse_output(WRK_WITH_SCRIPT)
    assert r.requests == 16000
    assert r.duration_s == pytest.approx(2.0)
    assert r.requests_per_s == pytest.approx(8000.0)
    assert r.latency_ms == pytest.approx({"p50": 1.5, "p90": 3.0, "p99": 9.0, "mean": 2.0015,
                                          "max": 40.0})
    assert r.statuses == {200: 15998, 503: 2}
    assert r.pids == {4242: 9000, 4243: 7000}
    assert r.errors["status"] == 2 and r.socket_errors == 0


def test_parse_wrk_output_rejects_garbage() -> None:
    with pytest.raises(wrk.WrkError):
        wrk.parse_output("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_wrk_time_units() -> None:
    text = WRK_PLAIN.replace("6052 requests in 1.10s", "6052 requests in 1.00m")
    assert wrk.parse_output(text).duration_s == pytest.approx(60.0)


# -- built-in load generator ----------------------------------------------------------------


def _read(data: bytes) -> loadgen.Response:
    async def go() -> loadgen.Response:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return await loadgen.read_response(reader)
    return asyncio.run(go())


def test_read_response_framings() -> None:
    r = _read(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Worker-Pid: 77\r\n\r\nhello")
    assert (r.status, r.worker_pid, r.keep_alive, r.body_bytes) == (200, 77, True, 5)
    r = _read(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nConnection: close\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nT: 1\r\n\r\n")
    assert (r.status, r.keep_alive, r.body_bytes) == (201, False, 5)
    r = _read(b"HTTP/1.0 200 OK\r\n\r\nuntil the end")
    assert (r.keep_alive, r.body_bytes) == (False, 13)
    with pytest.raises(loadgen.ResponseError):
        _read(b"SSH-2.0-OpenSSH\r\n\r\n")
    with pytest.raises(loadgen.ResponseError):
        _read(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort")


async def _with_server(handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                         Awaitable[None]],
                       body: Callable[[int], Awaitable[Any]]) -> Any:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        return await body(port)
    finally:
        server.close()
        await server.wait_closed()


def _stalling_handler(stall_s: float) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                                  Awaitable[None]]:
    """Keep-alive server whose very first answer takes ``stall_s``; the others are instant."""
    state = {"first": True}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                if state["first"]:
                    state["first"] = False
                    await asyncio.sleep(stall_s)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
    return handle


def test_open_loop_charges_the_wait_to_the_requests_that_were_due() -> None:
    """Coordinated omission: with one connection and a 0.3 s stall, every request due during
    the stall is late; the open loop must see ~30 slow requests where a closed loop sees one."""
    stall = 0.3

    async def open_run(port: int) -> loadgen.LoadResult:
        return await loadgen.open_loop(port, rate=100, duration_s=1.0, keep_alive=True,
                                       connections=1, timeout_s=3.0)

    async def closed_run(port: int) -> loadgen.LoadResult:
        return await loadgen.closed_loop(port, connections=1, duration_s=1.0, keep_alive=True)

    opened = asyncio.run(_with_server(_stalling_handler(stall), open_run))
    assert opened.requests == 100 and not opened.errors and opened.late == 0
    slow = [x for x in opened.latencies_s if x > 0.1]
    assert len(slow) >= 15  # requests due at 0, 10, 20, ... 200 ms all waited past 100 ms
    assert max(opened.latencies_s) >= stall * 0.9

    closed = asyncio.run(_with_server(_stalling_handler(stall), closed_run))
    assert closed.requests > 50
    assert len([x for x in closed.latencies_s if x > 0.1]) == 1


def test_closed_loop_counts_unanswered_requests_when_finishing_in_flight() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read()  # never answers
        finally:
            writer.close()

    async def run(port: int) -> loadgen.LoadResult:
        return await loadgen.closed_loop(port, connections=3, duration_s=0.2, keep_alive=False,
                                         timeout_s=0.3, finish_in_flight=True)

    t0 = time.monotonic()
    result = asyncio.run(_with_server(silent, run))
    assert time.monotonic() - t0 < 2.0
    assert result.requests == 0
    assert result.errors == {"timeout": 3}


# -- real runs ---------------------------------------------------------------------------------


def check_report(doc: dict[str, Any], scenarios: list[str], labels: list[str]) -> None:
    """The JSON layout documented in docs/benchmarks.md."""
    assert doc["schema"] == "gunicorn-fdpass-bench/1"
    assert isinstance(doc["started"], str) and isinstance(doc["app"], str)
    assert doc["bench_app"] == "gunicorn_fdpass.bench.apps:app"
    assert doc["baseline"] == "sync"
    assert set(doc["machine"]) == {"cpus", "platform", "python", "gunicorn", "wrk", "packages"}
    assert doc["machine"]["packages"]["gunicorn"] == doc["machine"]["gunicorn"]
    assert doc["app_kind"] == "wsgi" and doc["skipped"] == []
    assert doc["settings"]["workers"] == 2
    assert [w["label"] for w in doc["workers"]] == labels
    for w in doc["workers"]:
        assert set(w) == {"label", "worker_class", "threads"}
    assert [s["name"] for s in doc["scenarios"]] == scenarios
    assert len(doc["results"]) == len(scenarios) * len(labels)
    keys = {"scenario", "round", "worker", "worker_class", "threads", "app", "loadgen",
            "elapsed_s", "metrics", "error", "skipped"}
    assert doc["settings"]["repeat"] == 1
    for r in doc["results"]:
        assert set(r) == keys and r["round"] == 1
        assert r["error"] is None and r["skipped"] is None, r
        assert r["scenario"] in scenarios and r["worker"] in labels
        assert isinstance(r["metrics"], dict) and r["elapsed_s"] > 0
        m = r["metrics"]
        for key in ("requests", "requests_per_s", "statuses", "errors", "latency_ms"):
            assert key in m, (r["scenario"], key)
        assert set(m["latency_ms"]) >= {"count", "p50", "p90", "p99", "max", "mean"}
        assert sum(m["statuses"].values()) == m["requests"]
    assert doc["table"]
    for row in doc["table"]:
        master_row = row["metric"].startswith("master")
        assert set(row) == {"scenario", "metric", "unit", "better", "values", "ratios"} | (
            {"compare"} if master_row else set())
        assert row["better"] in ("higher", "lower")
        assert list(row["values"]) == labels and list(row["ratios"]) == labels
        base = row["values"]["sync"]
        if master_row:
            # sync's master accepts nothing: no ratio against its stray ticks.
            assert row["compare"] is False and set(row["ratios"].values()) == {None}
        elif base:
            assert row["ratios"]["sync"] == pytest.approx(1.0)
            for label in labels:
                v = row["values"][label]
                if v is not None:
                    assert row["ratios"][label] == pytest.approx(v / base)


def check_cpu(cpu: dict[str, Any], *, one_request_per_connection: bool) -> None:
    """The CPU figures of one throughput run add up."""
    ticks_us = cpu["tick_s"] * 1e6
    assert cpu["requests"] > 0 and cpu["connections"] >= 1
    if one_request_per_connection:
        assert cpu["connections"] >= cpu["requests"]
    assert cpu["master_ticks"] >= 0 and cpu["worker_ticks"] > 0
    assert cpu["worker_us_per_req"] == pytest.approx(
        cpu["worker_ticks"] * ticks_us / cpu["requests"])
    assert cpu["master_us_per_req"] == pytest.approx(
        cpu["master_ticks"] * ticks_us / cpu["requests"])
    assert cpu["master_us_per_conn"] == pytest.approx(
        cpu["master_ticks"] * ticks_us / cpu["connections"])
    assert cpu["server_us_per_req"] == pytest.approx(
        cpu["master_us_per_req"] + cpu["worker_us_per_req"])
    if cpu["master_ticks"] >= CEILING_MIN_TICKS:
        assert cpu["master_ceiling_per_s"] == pytest.approx(1e6 / cpu["master_us_per_req"])
    else:  # a few ticks at most: the ceiling is unknown, not millions per second
        assert cpu["master_ceiling_per_s"] is None


def check_table(text: str, n_rows: int, labels: list[str],
                failed: dict[str, str] | None = None) -> None:
    """Each cell is ``value (ratio)``, or ``FAILED: why`` for the classes in ``failed``."""
    lines = text.strip().splitlines()
    assert lines[0].split() == ["scenario", "metric", "better", *labels]
    body = lines[2:2 + n_rows]
    assert len(body) == n_rows
    for line in body:
        cells = re.split(r"\s{2,}", line.strip())
        assert len(cells) == 3 + len(labels), line
        for label, cell in zip(labels, cells[3:], strict=True):
            if failed and label in failed:
                assert cell == f"FAILED: {failed[label]}", (cell, line)
            else:
                assert CELL_RE.match(cell), (cell, line)


def check_progress(stderr: str, scenarios: list[str], labels: list[str]) -> None:
    lines = [line for line in stderr.splitlines() if line.startswith("[")]
    total = len(scenarios) * len(labels)
    assert len(lines) == total, stderr
    seen = []
    for n, line in enumerate(lines, 1):
        match = PROGRESS_RE.match(line)
        assert match, line
        assert (int(match.group(1)), int(match.group(2))) == (n, total)
        seen.append((match.group(3), match.group(4)))
    assert seen == [(s, label) for s in scenarios for label in labels]


def by(doc: dict[str, Any], scenario: str, worker: str) -> dict[str, Any]:
    for r in doc["results"]:
        if r["scenario"] == scenario and r["worker"] == worker:
            metrics: dict[str, Any] = r["metrics"]
            return metrics
    raise KeyError((scenario, worker))


def test_every_scenario_with_the_builtin_generator(tmp_path: Path) -> None:
    """``python -m gunicorn_fdpass.bench`` end to end: all scenarios, all three classes."""
    json_path, md_path, plot_dir = tmp_path / "out.json", tmp_path / "out.md", tmp_path / "png"
    slow_ms = 150
    cmd = [sys.executable, "-m", "gunicorn_fdpass.bench", "gunicorn_fdpass.bench.apps:app",
           "--loadgen", "builtin", "-d", "0.6", "--warmup", "0", "-c", "4",
           "--slow-clients", "2", "--slow-deadline", "0.4", "--hol-slow-ms", str(slow_ms),
           "--hol-rate", "40", "--handoff-connections", "8",
           "--json", str(json_path), "--markdown", str(md_path), "--plots", str(plot_dir)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    scenarios = list(default_names("wsgi"))  # all but balance, which ASGI runs add
    assert scenarios == [n for n in SCENARIO_NAMES if n != "balance"]
    doc = json.loads(json_path.read_text())
    check_report(doc, scenarios, LABELS)
    check_table(proc.stdout, len(doc["table"]), LABELS)
    check_progress(proc.stderr, scenarios, LABELS)
    assert md_path.read_text().startswith("| scenario | metric | better | sync |")
    # --from-json renders the same table again without running anything.
    again = subprocess.run([sys.executable, "-m", "gunicorn_fdpass.bench", "--from-json",
                            str(json_path), "--markdown", str(tmp_path / "again.md")],
                           cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
    assert again.returncode == 0, again.stderr
    assert again.stdout == proc.stdout
    assert (tmp_path / "again.md").read_text() == md_path.read_text()
    assert doc["settings"]["throughput_loadgen"] == "builtin"
    assert {r["loadgen"] for r in doc["results"]} == {"builtin", "builtin-open-loop"}

    for label in LABELS:
        for name in ("close", "keepalive", "handoff"):
            m = by(doc, name, label)
            assert m["requests"] > 0 and set(m["statuses"]) == {"200"}, (name, label, m)
        fair = by(doc, "fairness", label)
        assert len(fair["per_worker"]) == 2  # both workers, even one that served nothing
        assert sum(fair["per_worker"].values()) == fair["requests"]
        assert 0.5 <= fair["jain"] <= 1.0
        slow = by(doc, "slow-clients", label)
        assert (slow["silent"], slow["half_sent"], slow["slow_bodies"]) == (2, 2, 2)
        assert slow["attempted"] == slow["answered"] + slow["timed_out"] > 0
        hol = by(doc, "hol", label)
        assert hol["requests"] + sum(hol["errors"].values()) + hol["late"] == int(40 * 0.6 * 0.9)
        assert len(hol["fast_latencies_ms"]) == hol["requests"]
        assert hol["slow_requests"] > 0
        queue = by(doc, "queueing", label)
        assert queue["connections"] == 16 and len(queue["per_connection"]) == 16
        assert sum(queue["per_connection"]) == queue["requests"] > 0
        assert set(queue["statuses"]) == {"200"}
        spread = queue["per_connection_spread"]
        assert spread["min"] <= spread["mean"] <= spread["max"] and spread["cv"] >= 0
        # /slow?ms=5 on 16 connections: no request is answered faster than its view.
        assert queue["latency_ms"]["p50"] >= 5.0
        for name in ("close", "keepalive", "fairness", "handoff", "queueing"):
            check_cpu(by(doc, name, label)["cpu"], one_request_per_connection=name in (
                "close", "handoff"))
    # The fdpass master did the dispatching: it used CPU, sync's and gthread's barely any.
    master_ticks = {label: sum(by(doc, name, label)["cpu"]["master_ticks"]
                               for name in ("close", "keepalive", "fairness", "handoff"))
                    for label in LABELS}
    assert master_ticks["fdpass"] > master_ticks["sync"], master_ticks
    assert master_ticks["fdpass"] > master_ticks["gthread/4"], master_ticks
    metrics = {(t["scenario"], t["metric"]) for t in doc["table"]}
    assert {("close", "master CPU per conn"), ("keepalive", "master CPU per req"),
            ("handoff", "master ceiling"), ("fairness", "worker CPU per req"),
            ("close", "total CPU per req"), ("queueing", "p99 latency"),
            ("queueing", "max latency"), ("queueing", "requests per connection CV")} <= metrics
    # Controls showing the scenarios bite: two sync workers stuck on the silent connections
    # answer nothing, and fast requests queue behind slow ones.
    assert by(doc, "slow-clients", "sync")["answered"] == 0
    assert by(doc, "hol", "sync")["latency_ms"]["p99"] >= slow_ms * 0.5

    if plot_dir.exists():  # matplotlib installed
        pngs = sorted(p.name for p in plot_dir.iterdir())
        assert pngs == ["comparison.png", "fairness.png", "hol_latency.png"]
        for name in pngs:
            assert (plot_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert "plots skipped" in proc.stderr


@pytest.mark.skipif(wrk.available() is None, reason="wrk is not installed")
def test_throughput_scenarios_with_wrk(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    json_path = tmp_path / "out.json"
    scenarios = ["close", "keepalive", "fairness", "handoff"]
    code = cli.main(["gunicorn_fdpass.bench.apps:app", "--loadgen", "wrk", "-d", "1",
                     "--warmup", "0", "-c", "4", "--handoff-connections", "8",
                     "-s", ",".join(scenarios), "--json", str(json_path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    doc = json.loads(json_path.read_text())
    check_report(doc, scenarios, LABELS)
    check_table(out, len(doc["table"]), LABELS)
    check_progress(err, scenarios, LABELS)
    assert doc["machine"]["wrk"] and doc["settings"]["throughput_loadgen"] == "wrk"
    for r in doc["results"]:
        assert r["loadgen"] == "wrk"
        m = r["metrics"]
        assert m["requests"] > 0 and set(m["statuses"]) == {"200"}
        assert 0.9 <= m["duration_s"] <= 3.0
    for label in LABELS:
        fair = by(doc, "fairness", label)
        # The Lua script counted X-Worker-Pid for every response, per worker.
        assert len(fair["per_worker"]) == 2
        assert sum(fair["per_worker"].values()) == fair["requests"]


def test_a_server_that_cannot_start_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["no_such_module_for_bench:app", "--classes", "sync", "-s", "close",
                     "-d", "0.5", "--warmup", "0", "--loadgen", "builtin"])
    out, err = capsys.readouterr()
    assert code == 1
    assert "could not start sync" in err
    assert "hint: no_such_module_for_bench:app is not importable" in err
    assert re.search(r"\[1/1\] close\s+sync\s+FAILED: server did not start", err)
    assert "FAILED: close on sync: server did not start" in err
    # Every row of the scenario says so, where it used to show "- (-)".
    n_rows = len(next(s for s in cli.SCENARIOS if s.name == "close").headlines)
    check_table(out, n_rows, ["sync"], failed={"sync": "server did not start"})


def test_bad_arguments_stop_before_starting_anything() -> None:
    for argv in (["-s", "nope"], ["--duration", "0"], ["--classes", "sync,gthread@0"],
                 ["-w", "0"]):
        with pytest.raises((SystemExit, ValueError)):
            cli.run(cli.build_parser().parse_args(argv), sys.stderr)


def test_repeated_rounds_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    json_path = tmp_path / "out.json"
    labels = ["sync", "fdpass"]
    code = cli.main(["gunicorn_fdpass.bench.apps:app", "--classes",
                     "sync,gunicorn_fdpass.Worker", "-s", "close", "--repeat", "2",
                     "--loadgen", "builtin", "-d", "0.4", "--warmup", "0", "-c", "2",
                     "--json", str(json_path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    doc = json.loads(json_path.read_text())
    assert doc["settings"]["repeat"] == 2
    # The classes took turns within each round.
    assert [(r["round"], r["worker"]) for r in doc["results"]] == [
        (1, "sync"), (1, "fdpass"), (2, "sync"), (2, "fdpass")]
    throughput = doc["table"][0]
    assert len(throughput["round_ratios"]["fdpass"]) == 2
    check_table(out, len(doc["table"]), labels)
    progress = [line for line in err.splitlines() if line.startswith("[")]
    assert [line.split()[1:4] for line in progress] == [
        ["close", "1/2", "sync"], ["close", "1/2", "fdpass"],
        ["close", "2/2", "sync"], ["close", "2/2", "fdpass"]]
    assert cli.main(["--from-json", str(json_path)]) == 0
    assert capsys.readouterr().out == out


def test_plots_show_each_class_in_its_median_round() -> None:
    from gunicorn_fdpass.bench import plots

    def result(worker: str, n: int, jain: float | None, error: str | None = None
               ) -> dict[str, Any]:
        return {"scenario": "fairness", "round": n, "worker": worker, "error": error,
                "metrics": {"jain": jain}}
    doc = {"workers": [{"label": "sync"}, {"label": "fdpass"}], "results": [
        result("fdpass", 1, 0.90), result("sync", 1, 0.99), result("fdpass", 2, 0.99),
        result("sync", 2, None, "failed"), result("fdpass", 3, 0.95)]}
    picked = plots._median_rounds(doc, "fairness", lambda m: m.get("jain"))
    assert [(r["worker"], r["round"]) for r in picked] == [("sync", 1), ("fdpass", 3)]
