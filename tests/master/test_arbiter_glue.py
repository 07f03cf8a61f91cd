"""The arbiter glue keeps the master alive through an unexpected dispatcher error."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from gunicorn_fdpass.master.arbiter import _MasterLoop
from gunicorn_fdpass.settings import FdpassSettings


class _Log:
    def __init__(self) -> None:
        self.errors: list[str] = []

    def exception(self, msg: str, *args: Any) -> None:
        self.errors.append(msg % args)

    def debug(self, *_: Any, **__: Any) -> None:
        pass


class _BrokenDispatcher:
    def __init__(self) -> None:
        self.polls = 0

    def poll(self, timeout: float) -> None:
        self.polls += 1
        raise KeyError("a bug in a dispatcher round")

    def run(self, timeout: float) -> None:
        self.poll(timeout)


def test_a_dispatcher_error_is_logged_and_the_master_goes_on() -> None:
    log = _Log()
    arbiter = SimpleNamespace(cfg=object(), log=log)
    dispatcher = _BrokenDispatcher()
    loop = _MasterLoop(arbiter, dispatcher, FdpassSettings())  # type: ignore[arg-type]
    loop._poll(0)
    loop._poll(0, one_round=True)
    assert dispatcher.polls == 2
    assert len(log.errors) == 2 and "a bug" in log.errors[0]
