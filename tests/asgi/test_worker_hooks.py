"""pre_request of both worker classes (LinkedWorker's, tested through ASGIWorker): Gunicorn's
default hook (a debug line) is skipped unless debug lines are logged; any other hook always
runs."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest
from gunicorn.config import Config
from gunicorn.glogging import Logger

from gunicorn_fdpass.worker.api import RequestInfo
from gunicorn_fdpass.worker.asgi_worker import ASGIWorker

REQ = RequestInfo("GET", "/a", "/a", "", "", (1, 1), [], "http", ("127.0.0.1", 1))


def worker(*, custom: bool, level: str) -> tuple[Any, list[str]]:
    """A stand-in for the worker with what pre_request reads, and the log lines written."""
    cfg = Config()
    cfg.set("loglevel", level)
    calls: list[str] = []
    if custom:
        cfg.set("pre_request", lambda w, req: calls.append(req.path))
    log = Logger(cfg)
    handler = logging.Handler()
    handler.emit = lambda record: calls.append(record.getMessage())  # type: ignore[method-assign]
    log.error_log.addHandler(handler)
    fake = SimpleNamespace(cfg=cfg, log=log)
    ASGIWorker._learn_hooks(fake)  # what the worker reads from cfg when it is made
    fake._debug_logged = lambda: ASGIWorker._debug_logged(fake)
    fake.pre_request_wanted = lambda: ASGIWorker.pre_request_wanted(fake)
    return fake, calls


@pytest.mark.parametrize(("custom", "level", "expected"), [
    (False, "info", []),  # the default hook would write nothing: not called
    (False, "debug", ["GET /a"]),  # ... unless debug lines are logged
    (True, "info", ["/a"]),  # an application's own hook always runs
    (True, "debug", ["/a"]),
])
def test_pre_request_hook(custom: bool, level: str, expected: list[str]) -> None:
    fake, calls = worker(custom=custom, level=level)
    ASGIWorker.pre_request(fake, REQ)
    assert calls == expected



@pytest.mark.parametrize(("custom", "level", "wanted"), [
    (False, "info", False),  # the cycle then makes no request info for the hook
    (False, "debug", True),
    (True, "info", True),
])
def test_pre_request_wanted_only_when_the_hook_would_do_something(
        custom: bool, level: str, wanted: bool) -> None:
    fake, _ = worker(custom=custom, level=level)
    assert ASGIWorker.pre_request_wanted(fake) is wanted
