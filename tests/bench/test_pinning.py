"""``--pin-master`` (issue 11 item 6): the master on one CPU, workers and load generator on
the others, read back from the processes themselves."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from gunicorn_fdpass.bench import affinity, cli, loadgen, wrk
from gunicorn_fdpass.bench.servers import Server, WorkerSpec

ALLOWED = os.sched_getaffinity(0)
needs_two_cpus = pytest.mark.skipif(len(ALLOWED) < 2, reason="needs at least 2 CPUs")


def test_split_gives_the_master_the_lowest_cpu() -> None:
    pinning = affinity.Pinning.split({3, 1, 2})
    assert pinning.master == {1} and pinning.others == {2, 3}
    assert pinning.as_dict() == {"master": [1], "others": [2, 3]}
    with pytest.raises(ValueError, match="at least 2 CPUs"):
        affinity.Pinning.split({0})


def test_pinned_self_restores_the_mask() -> None:
    with affinity.pinned_self(frozenset({min(ALLOWED)})):
        assert os.sched_getaffinity(0) == {min(ALLOWED)}
    assert os.sched_getaffinity(0) == ALLOWED
    with affinity.pinned_self(None):
        assert os.sched_getaffinity(0) == ALLOWED


def _masks(pid: int) -> set[frozenset[int]]:
    """The distinct masks of every thread of ``pid``."""
    return {frozenset(os.sched_getaffinity(tid)) for tid in affinity.tasks(pid)}


@needs_two_cpus
def test_apply_pins_the_master_and_every_thread_of_every_worker() -> None:
    pinning = affinity.Pinning.split(ALLOWED)
    # gthread: its workers' thread pools exist before anything is pinned.
    with Server("gunicorn_fdpass.bench.apps:app", WorkerSpec("gthread", 2), 2,
                cwd=str(Path(__file__).parents[2])) as server:
        assert server.proc is not None
        workers = server.worker_pids()
        assert len(workers) == 2
        # gthread starts its pool's threads on demand: concurrent slow requests make them.
        asyncio.run(loadgen.closed_loop(server.port, path="/slow?ms=50", connections=6,
                                        duration_s=0.3))
        assert any(len(affinity.tasks(pid)) > 1 for pid in workers)
        reported = affinity.apply(pinning, server.proc.pid, workers)
        assert _masks(server.proc.pid) == {pinning.master}
        for pid in workers:
            assert _masks(pid) == {pinning.others}  # every thread of it
        assert reported["master"] == sorted(pinning.master)
        assert reported["workers"] == {str(p): sorted(pinning.others) for p in workers}


@needs_two_cpus
def test_pin_master_in_a_short_run(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pinning = affinity.Pinning.split(ALLOWED)
    loadgen = "wrk" if wrk.available() else "builtin"
    code = cli.main(["gunicorn_fdpass.bench.apps:app", "--pin-master", "-s", "close,queueing",
                     "--classes", "sync,gunicorn_fdpass.Worker", "--loadgen", loadgen,
                     "-d", "0.3", "--warmup", "0", "-c", "2", "--queueing-connections", "4",
                     "--json", str(tmp_path / "out.json")])
    _, err = capsys.readouterr()
    assert code == 0, err
    assert os.sched_getaffinity(0) == ALLOWED  # the test process got its mask back
    doc = json.loads((tmp_path / "out.json").read_text())
    assert doc["settings"]["pin_master"] == pinning.as_dict()
    for r in doc["results"]:
        pinned = r["metrics"]["affinity"]
        assert pinned["master"] == sorted(pinning.master)
        assert len(pinned["workers"]) == 2
        assert all(mask == sorted(pinning.others) for mask in pinned["workers"].values())
        assert pinned["bench"] == sorted(pinning.others)  # the built-in load generator
        if r["loadgen"] == "wrk":  # read back from the wrk process
            assert r["metrics"]["loadgen_cpus"] == sorted(pinning.others)
