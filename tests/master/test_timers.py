"""Timer lists and the alarm that tells the master's loop when to look at them."""

from __future__ import annotations

import math

from gunicorn_fdpass.master.states import ClientConnection
from gunicorn_fdpass.master.timers import Alarm, Timeouts


def _conn(conn_id: int) -> ClientConnection:
    return ClientConnection(conn_id, None, b"", fd=-1)


def test_the_alarm_rings_no_later_than_the_first_timer_added() -> None:
    alarm = Alarm()
    alarm.at = math.inf
    timers = Timeouts(2.0, alarm)
    timers.add(_conn(1), now=10.0)
    timers.add(_conn(2), now=11.0)
    assert alarm.at == 12.0  # the later one does not move it back
    other = Timeouts(0.5, alarm)
    other.add(_conn(3), now=11.0)
    assert alarm.at == 11.5  # a shorter timeout elsewhere rings first


def test_a_removed_timer_leaves_the_alarm_early_but_never_late() -> None:
    alarm = Alarm()
    alarm.at = math.inf
    timers = Timeouts(2.0, alarm)
    first, second = _conn(1), _conn(2)
    timers.add(first, now=10.0)
    timers.add(second, now=11.0)
    timers.remove(first)
    assert alarm.at == 12.0  # stale: one needless look then
    assert timers.expired(12.0) == []
    assert timers.next_deadline() == 13.0  # what the loop sets the alarm to after that look
    assert timers.expired(13.0) == [second]


def test_reset_makes_the_next_round_look() -> None:
    alarm = Alarm()
    alarm.set(5.0)
    assert alarm.at == 0.0  # a new alarm looks at once
    alarm.at = 7.0
    alarm.set(9.0)
    assert alarm.at == 7.0
    alarm.reset()
    assert alarm.at == 0.0
