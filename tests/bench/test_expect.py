"""The comparison tool cannot report error pages as success (issue 14 item 1): expected
statuses, failing cells, the JSON, the exit status, and what it says without an app."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gunicorn_fdpass.bench import cli, expect, wrk
from gunicorn_fdpass.bench.expect import StatusSet

BENCH_APP = "gunicorn_fdpass.bench.apps:app"


def test_status_set_parsing_and_membership() -> None:
    default = StatusSet.parse("2xx")
    assert default == expect.SUCCESS
    assert 200 in default and 204 in default and 299 in default
    assert 199 not in default and 301 not in default and 404 not in default
    mixed = StatusSet.parse(" 2xx, 404 ,3XX")
    assert all(status in mixed for status in (200, 302, 399, 404))
    assert 500 not in mixed and 403 not in mixed
    assert str(mixed) == "2xx,3xx,404"
    assert str(StatusSet.parse("200,404")) == "200,404"
    assert 201 not in StatusSet.parse("200,404")
    for bad in ("", "abc", "2x", "600", "99", "2xx,", "6xx", "0xx"):
        with pytest.raises(ValueError):
            StatusSet.parse(bad)


def test_unexpected_statuses_are_found_per_path_and_described() -> None:
    by_path = {"/": {200: 10, 404: 7017}, "/slow?ms=5": {200: 3, 500: 2}, "/ok": {204: 1}}
    found = expect.unexpected(by_path, expect.SUCCESS)
    assert found == {"/": {404: 7017}, "/slow?ms=5": {500: 2}}
    assert expect.describe(found) == "7017 x 404 on /; 2 x 500 on /slow?ms=5"
    assert expect.unexpected(by_path, StatusSet.parse("2xx,404,500")) == {}
    assert expect.count_expected({200: 3, 404: 5, 301: 1}, StatusSet.parse("2xx,404")) == 8
    hint = expect.hint(["/", "/"], expect.SUCCESS)
    assert "--path" in hint and "--expect-status 2xx,404" in hint and "(requested: /)" in hint


def test_a_bad_expect_status_stops_the_parser() -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["--expect-status", "ok"])
    args = cli.build_parser().parse_args(["--expect-status", "200,404"])
    assert 404 in args.expect_status and 201 not in args.expect_status


def _run(capsys: pytest.CaptureFixture[str], tmp_path: Path, *extra: str
         ) -> tuple[int, str, str, dict[str, Any]]:
    json_path = tmp_path / "out.json"
    code = cli.main([BENCH_APP, "--path", "/missing", "--classes", "sync,gunicorn_fdpass.Worker",
                     "-s", "close,keepalive,slow-clients", "--loadgen", "builtin", "-d", "0.3",
                     "--warmup", "0", "-c", "2", "--slow-clients", "1", "--slow-deadline", "0.3",
                     "--json", str(json_path), *extra])
    out, err = capsys.readouterr()
    return code, out, err, json.loads(json_path.read_text())


def test_error_pages_fail_every_scenario(capsys: pytest.CaptureFixture[str],
                                         tmp_path: Path) -> None:
    """An app answering 404: the cells, the JSON, the progress, a summary and the exit status
    all say so; the slow-clients row does not count the 404s as answered."""
    code, out, err, doc = _run(capsys, tmp_path)
    assert code == 1
    failed = {(r["scenario"], r["worker"]): r for r in doc["results"] if r["error"]}
    # sync's slow-clients probe got no answer at all (its workers are held): not a 404.
    assert set(failed) == {("close", "sync"), ("close", "fdpass"), ("keepalive", "sync"),
                           ("keepalive", "fdpass"), ("slow-clients", "fdpass")}
    for (scenario, worker), r in failed.items():
        n = r["metrics"]["requests"]
        assert n > 0 and r["error"] == f"{n} x 404 on /missing"
        assert r["metrics"]["unexpected_statuses"] == {"/missing": {"404": n}}
        assert re.search(rf"{re.escape(scenario)}\s+{worker}\s+FAILED: {n} x 404 on /missing",
                         err), err
        assert f"FAILED: {scenario} on {worker}: {n} x 404 on /missing" in err
    assert "hint: only 2xx counts as success" in err and "--expect-status" in err
    assert [(f["scenario"], f["worker"]) for f in doc["failures"]] == list(failed)
    for row in doc["table"]:
        expected_failures = {w: f"{r['metrics']['requests']} x 404 on /missing"
                             for (s, w), r in failed.items() if s == row["scenario"]}
        assert row.get("failures", {}) == expected_failures, row
        for worker in expected_failures:
            assert row["values"][worker] is None
    table = out.splitlines()
    close_rows = [line for line in table if line.startswith("close ")]
    assert close_rows and all(line.count("FAILED: ") == 2 for line in close_rows)
    slow = next(r for r in doc["results"]
                if (r["scenario"], r["worker"]) == ("slow-clients", "fdpass"))["metrics"]
    assert slow["answered"] > 0 and slow["answered_ok"] == 0 and slow["answered_pct"] == 0.0
    # --from-json shows the same cells and exits non-zero again.
    again = cli.main(["--from-json", str(tmp_path / "out.json")])
    out2, err2 = capsys.readouterr()
    assert again == 1 and out2 == out and "FAILED: close on sync" in err2


def test_expect_status_accepts_what_is_meant(capsys: pytest.CaptureFixture[str],
                                             tmp_path: Path) -> None:
    code, out, err, doc = _run(capsys, tmp_path, "--expect-status", "2xx,404")
    assert code == 0, err
    assert doc["settings"]["expect_status"] == "2xx,404"
    assert not doc["failures"] and "FAILED" not in out + err
    slow = next(r for r in doc["results"]
                if (r["scenario"], r["worker"]) == ("slow-clients", "fdpass"))["metrics"]
    assert slow["answered_ok"] == slow["answered"] > 0
    assert slow["answered_pct"] == pytest.approx(100.0 * slow["answered"] / slow["attempted"])


@pytest.mark.skipif(wrk.available() is None, reason="wrk is not installed")
def test_error_pages_fail_under_wrk_too(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main([BENCH_APP, "--path", "/missing", "--classes", "gunicorn_fdpass.Worker",
                     "-s", "close", "--loadgen", "wrk", "-d", "1", "--warmup", "0", "-c", "2"])
    out, err = capsys.readouterr()
    assert code == 1
    assert re.search(r"FAILED: close on fdpass: \d+ x 404 on /missing", err), err
    assert "FAILED: " in out


def test_without_an_app_outside_the_repository_it_says_what_to_pass(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-m", "gunicorn_fdpass.bench", "-s", "close",
                           "-d", "0.3", "--warmup", "0", "--loadgen", "builtin"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "ModuleNotFoundError" not in proc.stderr
    assert "examples.hello:app" in proc.stderr and str(tmp_path.resolve()) in proc.stderr
    assert "module:callable" in proc.stderr and BENCH_APP in proc.stderr
    assert proc.stdout == ""  # nothing ran
    # From the repository root the default is found.
    assert cli.resolve_app(cli.DEFAULT_APP, str(Path(__file__).parents[2]))[0] == cli.DEFAULT_APP
