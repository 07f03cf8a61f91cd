"""The master's live numbers as tests see them: ``FDPASS_STATS_FILE``.

The master rewrites the file (atomically, through a temp file) once a second with its counts
(``queued``, ``parked``, ``busy``, ``accepted``, ...), ``busy_by_worker`` and ``time`` (wall
clock). A test that needs to know what the master holds waits for a report written after
the moment it cares about, instead of sleeping and hoping.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .wait import poll

Stats = dict[str, Any]

#: Counts that are all 0 when the master holds no connection and no worker is busy.
SETTLED_KEYS = ("queued", "parked", "waiting_for_head", "busy", "reserves", "waiting_for_body",
                "lingering")


def read_stats(path: str | os.PathLike[str]) -> Stats | None:
    """The last report, or None while there is none yet."""
    try:
        return json.loads(Path(path).read_text())  # type: ignore[no-any-return]
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def wait_stats(path: str | os.PathLike[str], predicate: Callable[[Stats], object],
               timeout: float = 10.0, after: float | None = None) -> Stats:
    """The first report written after ``after`` (wall clock; default: now) that satisfies
    ``predicate``; fails the test, showing the last report, if none does within ``timeout``."""
    since = time.time() if after is None else after
    last: Stats | None = None

    def matching() -> Stats | None:
        nonlocal last
        last = read_stats(path)
        if last is None or last.get("time", 0) <= since:
            return None
        return last if predicate(last) else None

    stats = poll(matching, timeout=timeout, interval=0.05)
    if not stats:
        raise AssertionError(f"no stats report matched within {timeout} s; last: {last}")
    return stats


def wait_settled(path: str | os.PathLike[str], timeout: float = 20.0,
                 after: float | None = None) -> Stats:
    """Wait until a report written after ``after`` (default: now) shows nothing queued,
    parked, waiting for its head or in a worker. Returns it."""
    return wait_stats(path, lambda s: all(s.get(k) == 0 for k in SETTLED_KEYS),
                      timeout=timeout, after=after)
