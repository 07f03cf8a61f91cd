"""The scheduling policy, as a pure object."""

from __future__ import annotations

from collections import Counter

import pytest

from gunicorn_fdpass.scheduler import Scheduler


def test_no_worker_means_no_pick() -> None:
    assert Scheduler[str]().pick() is None


def test_never_exceeds_capacity() -> None:
    s = Scheduler[str]()
    s.add("a", 1)
    s.add("b", 2)
    picks = [s.pick() for _ in range(4)]
    assert Counter(picks) == {"a": 1, "b": 2, None: 1}
    assert s.free_slots() == 0


def test_least_busy_first() -> None:
    s = Scheduler[str]()
    s.add("a", 4)
    s.add("b", 4)
    assert s.pick() == "a"
    assert s.pick() == "b"
    s.release("a")
    # a is idle again, b has one busy slot: a wins
    assert s.pick() == "a"
    assert (s.busy("a"), s.busy("b")) == (1, 1)


def test_busy_share_counts_not_absolute_busy() -> None:
    s = Scheduler[str]()
    s.add("small", 1)
    s.add("big", 4)
    assert s.pick() == "small"  # tie at 0%, small was added first
    # small is 100% busy; big takes the next four
    assert [s.pick() for _ in range(4)] == ["big"] * 4
    assert s.pick() is None


def test_idle_workers_share_work_round_robin() -> None:
    s = Scheduler[int]()
    for w in range(4):
        s.add(w, 1)
    served: Counter[int] = Counter()
    for _ in range(400):
        w = s.pick()
        assert w is not None
        served[w] += 1
        s.release(w)
    assert served == {0: 100, 1: 100, 2: 100, 3: 100}


def test_draining_worker_gets_nothing_but_releases() -> None:
    s = Scheduler[str]()
    s.add("a", 2)
    s.add("b", 2)
    assert s.pick() == "a"
    s.drain("a")
    assert [s.pick(), s.pick(), s.pick()] == ["b", "b", None]
    s.release("a")
    assert s.busy("a") == 0
    assert s.pick() is None


def test_removed_worker_is_forgotten() -> None:
    s = Scheduler[str]()
    s.add("a", 1)
    s.remove("a")
    s.remove("a")  # unknown: ignored
    s.release("a")
    assert "a" not in s
    assert s.pick() is None
    assert len(s) == 0


def test_release_never_goes_negative() -> None:
    s = Scheduler[str]()
    s.add("a", 1)
    s.release("a")
    assert s.busy("a") == 0
    assert s.pick() == "a"


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Scheduler[str]().add("a", 0)
