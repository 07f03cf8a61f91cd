"""The scheduling policy, as a pure object."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from gunicorn_fdpass.master.scheduler import Scheduler


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


def test_reserve_only_when_no_worker_has_a_free_slot() -> None:
    s = Scheduler[str]()
    s.add("a", 1, reserve=1)
    s.add("b", 1, reserve=1)
    assert {s.pick(), s.pick()} == {"a", "b"}  # free slots first, one each
    assert s.overbooked() == []
    third = s.pick()
    assert third in ("a", "b")  # now a reserve
    assert s.overbooked() == [third]
    assert s.reserves_held() == 1
    assert s.free_slots() == 0
    fourth = s.pick()
    assert {third, fourth} == {"a", "b"}  # reserves spread too
    assert s.pick() is None  # every slot and reserve taken
    s.release("a")
    assert s.overbooked() == ["b"]  # a's reserve now occupies its free slot
    assert s.free_slots() == 0


def test_free_slot_beats_a_reserve_even_on_a_less_busy_share() -> None:
    s = Scheduler[str]()
    s.add("single", 1, reserve=1)
    s.add("pool", 4)
    assert s.pick() == "single"
    # single is full; pool is 0/4 busy, then 1/4... it takes all four before single's reserve
    assert [s.pick() for _ in range(4)] == ["pool"] * 4
    assert s.pick() == "single"
    assert s.overbooked() == ["single"]


def test_draining_worker_with_work_counts_as_overbooked() -> None:
    s = Scheduler[str]()
    s.add("a", 1, reserve=1)
    assert s.pick() == "a"
    s.drain("a")
    assert s.pick() is None
    assert s.overbooked() == ["a"]  # whatever it holds unread should be taken back
    assert s.reserves_held() == 0  # its request in progress waits for nothing


def test_a_worker_to_avoid_is_picked_only_when_no_other_can_take_the_connection() -> None:
    s = Scheduler[str]()
    s.add("a", 1, reserve=1)
    s.add("b", 1, reserve=1)
    assert s.pick() == "a"
    assert s.pick(avoid="b") == "a"  # a's reserve rather than b's free slot
    assert s.pick(avoid="b") == "b"  # nobody else can take it
    assert s.pick(avoid="b") == "b"  # b's reserve
    assert s.pick(avoid="b") is None


def test_negative_reserve_is_refused() -> None:
    with pytest.raises(ValueError):
        Scheduler[str]().add("a", 1, reserve=-1)


def test_totals_match_a_recount_after_any_sequence_of_changes() -> None:
    rng = random.Random(7)
    s = Scheduler[int]()
    for _ in range(2000):
        op = rng.choice(["add", "pick", "pick", "release", "release", "drain", "remove"])
        w = rng.randrange(4)
        if op == "add":
            s.add(w, rng.randint(1, 3), rng.randint(0, 1))
        elif op == "pick":
            s.pick()
        elif op == "release":
            s.release(w)
        elif op == "drain":
            s.drain(w)
        else:
            s.remove(w)
        slots = s._workers.values()
        assert s.free_slots() == sum(max(0, x.capacity - x.busy) for x in slots)
        assert sorted(s.overbooked()) == sorted(
            w for w, x in s._workers.items() if x.busy > x.capacity)
        assert s.reserves_held() == sum(
            min(x.reserve, max(0, x.busy - x.capacity)) for x in slots)
        assert s.can_take() == any(x.busy < x.capacity + x.reserve for x in slots)


def test_can_take_says_whether_pick_names_a_worker() -> None:
    s = Scheduler[str]()
    assert not s.can_take()
    s.add("a", 1, reserve=1)
    assert s.can_take() and s.pick() == "a"  # its slot
    assert s.can_take() and s.pick() == "a"  # its reserve
    assert not s.can_take() and s.pick() is None
    s.release("a")
    assert s.can_take()
