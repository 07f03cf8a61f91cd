"""The comparison tool takes ASGI apps (issue 12 item 8): detection of the app's kind, the ASGI
classes side by side, classes that are not installed, bursts of connections and the balance
scenario."""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import json
import re
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from gunicorn_fdpass.bench import balance, cli, cpu, loadgen, probe, stats
from gunicorn_fdpass.bench.apps import app as wsgi_bench_app
from gunicorn_fdpass.bench.asgi_apps import app as asgi_bench_app
from gunicorn_fdpass.bench.choose import choose
from gunicorn_fdpass.bench.servers import server_env

from .test_bench import CELL_RE, by, check_cpu, check_progress

ASGI_BENCH = "gunicorn_fdpass.bench.asgi_apps:app"
UVICORN = ["uvicorn_worker.UvicornWorker", "uvicorn_worker.UvicornH11Worker"]
HAVE_UVICORN = importlib.util.find_spec("uvicorn_worker") is not None


# -- what is an ASGI app ---------------------------------------------------------------------


async def _asgi3(scope: Any, receive: Any, send: Any) -> None:
    pass


async def _two(scope: Any, receive: Any) -> None:
    pass


async def _four(config: Any, scope: Any, receive: Any, send: Any) -> None:
    pass


def _wsgi(environ: Any, start_response: Any) -> list[bytes]:
    return []


class _AsyncCallable:
    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        pass


class _SyncCallable:
    def __call__(self, environ: Any, start_response: Any) -> list[bytes]:
        return []


def test_is_asgi_tells_asgi_3_from_wsgi() -> None:
    assert probe.is_asgi(_asgi3) and probe.is_asgi(asgi_bench_app)
    assert probe.is_asgi(_AsyncCallable())  # the shape of Starlette, FastAPI, Django
    assert probe.is_asgi(functools.partial(_four, None))
    assert not probe.is_asgi(_AsyncCallable)  # the class: calling it builds an object
    assert not probe.is_asgi(_two) and not probe.is_asgi(_four)
    assert not probe.is_asgi(_wsgi) and not probe.is_asgi(wsgi_bench_app)
    assert not probe.is_asgi(_SyncCallable()) and not probe.is_asgi("app")


def test_frameworks_are_detected() -> None:
    flask = pytest.importorskip("flask")
    starlette = pytest.importorskip("starlette.applications")
    assert probe.is_asgi(starlette.Starlette())
    assert not probe.is_asgi(flask.Flask("x"))


def test_class_problem_says_not_installed() -> None:
    assert probe.class_problem("sync") is None and probe.class_problem("asgi") is None
    assert probe.class_problem("gunicorn_fdpass.Worker") is None
    missing_class = probe.class_problem("gunicorn_fdpass.NoSuchWorker")
    assert missing_class == "not installed: gunicorn_fdpass has no NoSuchWorker"
    missing_module = probe.class_problem("no_such_bench_module.Worker")
    assert missing_module == "not installed: No module named 'no_such_bench_module'"
    assert (probe.class_problem("egg:no-such-dist#x") or "").startswith("not installed")
    if HAVE_UVICORN:
        assert all(probe.class_problem(name) is None for name in UVICORN)


def _write(directory: Path, name: str, source: str) -> None:
    (directory / f"{name}.py").write_text(textwrap.dedent(source))


def test_probe_runs_in_a_child_process(tmp_path: Path) -> None:
    _write(tmp_path, "probe_asgi", """
        print("imported")  # an app that prints on import does not confuse the answer
        class App:
            async def __call__(self, scope, receive, send):
                pass
        app = App()
    """)
    _write(tmp_path, "probe_broken", "raise RuntimeError('boom')\n")
    env = server_env(str(tmp_path))
    found = probe.run("probe_asgi:app", ["asgi", "no_such_bench_module.Worker"],
                      str(tmp_path), env)
    assert found.kind == "asgi" and found.app_error is None
    assert found.unusable == {
        "no_such_bench_module.Worker": "not installed: No module named 'no_such_bench_module'"}
    assert "probe_asgi" not in sys.modules  # imported there, not here
    broken = probe.run("probe_broken:app", [], str(tmp_path), env)
    assert broken.kind is None and broken.app_error == "RuntimeError: boom"


def _choose(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[Any, str]:
    args = cli.build_parser().parse_args(argv)
    chosen = choose(args, sys.stderr)
    return chosen, capsys.readouterr().err


def test_the_kind_decides_classes_baseline_and_scenarios(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write(tmp_path, "detect_me", """
        async def app(scope, receive, send):
            pass
    """)
    c, err = _choose(["detect_me:app", "--chdir", str(tmp_path)], capsys)
    assert c.kind == "asgi" and "detect_me:app: ASGI app" in err
    assert [s.worker_class for s in c.specs] == [
        "asgi", *UVICORN, "gunicorn_fdpass.ASGIWorker"]
    assert [s.label for s in c.specs] == ["asgi", "uvicorn", "uvicorn-h11", "fdpass"]
    assert c.baseline == "asgi"
    assert [s.name for s in c.scenarios] == [
        "close", "keepalive", "slow-clients", "hol", "fairness", "handoff", "queueing",
        "balance"]
    # No app and --asgi: the bundled ASGI bench app, without importing anything to tell.
    bare, err = _choose(["--asgi", "-s", "close"], capsys)
    assert (bare.app, bare.kind) == (ASGI_BENCH, "asgi") and "ASGI app" not in err
    # A WSGI app keeps the WSGI classes and scenarios.
    wsgi, _ = _choose(["gunicorn_fdpass.bench.apps:app"], capsys)
    assert [s.label for s in wsgi.specs] == ["sync", "gthread/4", "fdpass"]
    assert wsgi.baseline == "sync" and "balance" not in [s.name for s in wsgi.scenarios]
    # --wsgi overrides the detection; an app that cannot be imported is taken for WSGI.
    forced, _ = _choose(["detect_me:app", "--chdir", str(tmp_path), "--wsgi"], capsys)
    assert forced.kind == "wsgi"
    unknown, err = _choose(["no_such_bench_module:app", "-s", "close"], capsys)
    assert unknown.kind == "wsgi" and "pass --asgi if it is an ASGI app" in err


def test_a_skipped_baseline_gives_way_and_nothing_loadable_stops(
        capsys: pytest.CaptureFixture[str]) -> None:
    c, _ = _choose(["--asgi", "--classes", "gunicorn_fdpass.NoSuchWorker,asgi", "-s", "close"],
                   capsys)
    assert c.skipped == {"gunicorn_fdpass.NoSuchWorker":
                         "not installed: gunicorn_fdpass has no NoSuchWorker"}
    assert c.baseline == "asgi"
    c, _ = _choose(["--asgi", "--classes", "asgi", "-k", "sync", "--baseline",
                    "gunicorn_fdpass.NoSuchWorker", "-s", "close"], capsys)
    assert c.baseline == "asgi"
    with pytest.raises(SystemExit, match="none of the worker classes can be loaded"):
        _choose(["--asgi", "--classes", "no_such_bench_module.A", "-s", "close"], capsys)


# -- bursts of connections -------------------------------------------------------------------


def test_burst_loop_opens_the_next_burst_once_the_last_was_answered() -> None:
    events: list[tuple[str, int]] = []
    answered: set[int] = set()
    accepted_after: dict[int, set[int]] = {}  # connection -> connections answered then

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = len(accepted_after)
        accepted_after[n] = set(answered)
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                await asyncio.sleep(0.01)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
                answered.add(n)
                events.append(("answer", n))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def go() -> loadgen.LoadResult:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        try:
            port = server.sockets[0].getsockname()[1]
            return await loadgen.burst_loop(port, connections=7, burst=3, duration_s=0.4)
        finally:
            server.close()
            await server.wait_closed()

    result = asyncio.run(go())
    assert result.connects == 7 and len(accepted_after) == 7
    assert len(result.per_connection) == 7 and min(result.per_connection) > 0
    assert sum(result.per_connection) == result.requests
    # Bursts of 3, 3 and 1: each opened only after every connection before it was answered.
    for n in range(3, 7):
        assert accepted_after[n] >= set(range(3 if n < 6 else 6)), (n, accepted_after)
    assert not accepted_after[2] >= {0, 1}  # within a burst, nobody waited for an answer


# -- the balance scenario's arithmetic -------------------------------------------------------


def test_balance_figures_of_one_draw() -> None:
    before = cpu.Sample(master=0, workers={1: 10, 2: 10, 3: 10})
    after = cpu.Sample(master=0, workers={1: 40, 2: 20, 3: 10, 4: 5})  # 4: forked meanwhile
    ticks = balance.worker_cpu_ticks(before, after, [1, 2, 3])
    assert ticks == {1: 30, 2: 10, 3: 0, 4: 5}
    assert balance.worker_cpu_ticks(None, after, [1]) == {}
    result = loadgen.LoadResult(duration_s=1.0, per_connection=[5, 3, 2])
    result.statuses[200] = 10
    result.pids.update({1: 6, 2: 4})
    result.latencies_s += [0.001] * 10
    draw = balance.draw_metrics([1, 2, 3], before, after, result)
    assert draw["per_worker_requests"] == {"1": 6, "2": 4, "3": 0}
    assert draw["per_worker_cpu_ticks"] == {"1": 30, "2": 10, "3": 0, "4": 5}
    assert draw["jain_cpu"] == pytest.approx(stats.jain_index([30, 10, 0, 5]))
    assert draw["max_cpu_share_pct"] == pytest.approx(100 * 30 / 45)
    assert draw["jain_requests"] == pytest.approx(stats.jain_index([6, 4, 0]))
    assert draw["requests"] == 10 and draw["latency_ms"]["p99"] == pytest.approx(1.0)
    idle = balance.share_figures({1: 0, 2: 0})
    assert idle == {"jain": None, "max_share_pct": None}  # nothing measured, not "even"
    summary = balance.summarize_draws([draw, {**draw, "jain_cpu": 1.0, "max_cpu_share_pct": 25.0},
                                       {**draw, "jain_cpu": None, "max_cpu_share_pct": None}])
    assert summary["jain_cpu"] == pytest.approx((draw["jain_cpu"] + 1.0) / 2)
    assert summary["jain_cpu_min"] == pytest.approx(draw["jain_cpu"])
    assert summary["max_cpu_share_pct_max"] == pytest.approx(100 * 30 / 45)
    assert summary["per_worker_requests"] == {"1": 18, "2": 12, "3": 0}


# -- real runs -------------------------------------------------------------------------------


def _asgi_classes() -> list[str]:
    return ["asgi"] + (UVICORN if HAVE_UVICORN else [])


def _run(capsys: pytest.CaptureFixture[str], tmp_path: Path, *argv: str
         ) -> tuple[int, str, str, dict[str, Any]]:
    json_path = tmp_path / "out.json"
    code = cli.main([*argv, "--loadgen", "builtin", "-d", "0.3", "--warmup", "0",
                     "--json", str(json_path)])
    out, err = capsys.readouterr()
    return code, out, err, json.loads(json_path.read_text())


def check_balance(m: dict[str, Any], workers: int, connections: int, draws: int) -> None:
    """The balance scenario's numbers add up, draw by draw and over the draws."""
    assert (m["workers"], m["connections"], m["path"]) == (workers, connections, "/cpu?ms=1")
    assert len(m["draws"]) == draws
    total: Counter[str] = Counter()
    ticks = 0
    for d in m["draws"]:
        assert len(d["per_worker_requests"]) == workers  # idle workers count as 0
        assert sum(d["per_worker_requests"].values()) == d["requests"] > 0
        assert len(d["per_connection"]) == connections
        assert sum(d["per_connection"]) == d["requests"]
        per_cpu = d["per_worker_cpu_ticks"]
        assert set(per_cpu) == set(d["per_worker_requests"])
        ticks += sum(per_cpu.values())
        if sum(per_cpu.values()):
            assert d["jain_cpu"] == pytest.approx(stats.jain_index(per_cpu.values()))
            assert d["max_cpu_share_pct"] == pytest.approx(
                100 * max(per_cpu.values()) / sum(per_cpu.values()))
            assert 1 / workers - 1e-9 <= d["jain_cpu"] <= 1.0
        total.update(d["per_worker_requests"])
    assert dict(total) == m["per_worker_requests"]
    assert sum(total.values()) == m["requests"] == sum(m["statuses"].values())
    # The draws follow each other: their ticks are the workers' over the whole scenario.
    assert ticks == m["cpu"]["worker_ticks"] > 0
    jains = [d["jain_cpu"] for d in m["draws"] if d["jain_cpu"] is not None]
    assert m["jain_cpu"] == pytest.approx(sum(jains) / len(jains))
    assert m["jain_cpu_min"] == pytest.approx(min(jains))
    # 1 ms of CPU per request: the workers' CPU time is at least that (ticks of 10 ms).
    assert m["cpu"]["worker_us_per_req"] >= 500


def test_asgi_app_detected_and_compared_side_by_side(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A user's ASGI app (found to be one) under asgi and uvicorn's workers: close and
    keepalive on it with the CPU rows, balance on the bench app; a class that is not
    installed gets its cells and the run still succeeds."""
    _write(tmp_path, "user_asgi", """
        from gunicorn_fdpass.bench.asgi_apps import app as bench

        async def app(scope, receive, send):
            await bench(scope, receive, send)
    """)
    classes = [*_asgi_classes(), "gunicorn_fdpass.NoSuchWorker"]
    labels = [*["asgi", "uvicorn", "uvicorn-h11"][:len(classes) - 1], "fdpass"]
    scenarios = ["close", "keepalive", "balance"]
    t0 = time.monotonic()
    code, out, err, doc = _run(
        capsys, tmp_path, "user_asgi:app", "--chdir", str(tmp_path), "--classes",
        ",".join(classes), "-s", ",".join(scenarios), "-c", "4", "--balance-draws", "2")
    assert code == 0, err
    assert time.monotonic() - t0 < 90
    assert "user_asgi:app: ASGI app" in err
    assert (doc["app_kind"], doc["baseline"]) == ("asgi", "asgi")
    assert doc["bench_app"] == ASGI_BENCH
    assert [s["app"] for s in doc["scenarios"]] == ["user_asgi:app", "user_asgi:app", ASGI_BENCH]
    assert doc["skipped"] == [{"worker": "fdpass", "worker_class": "gunicorn_fdpass.NoSuchWorker",
                               "reason": "not installed: gunicorn_fdpass has no NoSuchWorker"}]
    assert doc["failures"] == []
    check_progress(err, scenarios, labels)
    assert re.search(r"\] close\s+fdpass\s+skipped: not installed", err)
    assert "skipped fdpass (gunicorn_fdpass.NoSuchWorker): not installed" in err
    lines = out.strip().splitlines()
    assert lines[0].split() == ["scenario", "metric", "better", *labels]
    for line in lines[2:2 + len(doc["table"])]:
        cells = re.split(r"\s{2,}", line.strip())
        assert cells[-1] == "not installed", line
        assert all(CELL_RE.match(cell) for cell in cells[3:-1]), line
    for row in doc["table"]:
        assert row["skipped"] == {"fdpass": "not installed"} and row["values"]["fdpass"] is None
    for label in labels[:-1]:
        for name in ("close", "keepalive"):
            m = by(doc, name, label)
            assert m["requests"] > 0 and set(m["statuses"]) == {"200"}, (name, label)
            check_cpu(m["cpu"], one_request_per_connection=name == "close")
        check_balance(by(doc, "balance", label), workers=4, connections=8, draws=2)
    # --from-json renders the same table, "not installed" cells included.
    assert cli.main(["--from-json", str(tmp_path / "out.json")]) == 0
    again = capsys.readouterr()
    assert again.out == out and "skipped fdpass" in again.err


def test_balance_with_other_sizes_and_the_bench_app_by_default(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plot_dir = tmp_path / "png"
    code, _, err, doc = _run(
        capsys, tmp_path, "--asgi", "--classes", "asgi", "-s", "balance",
        "--balance-workers", "3", "--balance-connections", "5", "--balance-burst", "2",
        "--balance-draws", "1", "--plots", str(plot_dir))
    assert code == 0, err
    if importlib.util.find_spec("matplotlib") is not None:
        assert sorted(p.name for p in plot_dir.iterdir()) == ["balance.png", "comparison.png"]
    assert doc["app"] == ASGI_BENCH and doc["settings"]["balance_workers"] == 3
    m = by(doc, "balance", "asgi")
    check_balance(m, workers=3, connections=5, draws=1)
    assert m["burst"] == 2
    metrics = [t["metric"] for t in doc["table"]]
    assert metrics[:3] == ["Jain's index of worker CPU", "worst draw's Jain's index",
                           "busiest worker's CPU share"]
    assert "p99 latency" in metrics


def test_plots_use_the_median_draw_and_leave_skipped_classes_out() -> None:
    from gunicorn_fdpass.bench import plots

    draws = [{"jain_cpu": 0.9, "per_worker_cpu_ticks": {"1": 9}},
             {"jain_cpu": None, "per_worker_cpu_ticks": {}},
             {"jain_cpu": 0.5, "per_worker_cpu_ticks": {"1": 5}},
             {"jain_cpu": 0.7, "per_worker_cpu_ticks": {"1": 7}}]
    assert plots._median_draw_cpu({"draws": draws}) == ({"1": 7}, 0.7)
    assert plots._median_draw_cpu({"draws": []}) == (None, None)
    doc = {"workers": [{"label": "asgi"}, {"label": "fdpass"}], "results": [
        {"scenario": "balance", "round": 1, "worker": "asgi", "error": None,
         "skipped": None, "metrics": {"jain_cpu": 0.6}},
        {"scenario": "balance", "round": 1, "worker": "fdpass", "error": None,
         "skipped": "not installed: x", "metrics": {}}]}
    picked = plots._median_rounds(doc, "balance", lambda m: m.get("jain_cpu"))
    assert [r["worker"] for r in picked] == ["asgi"]
