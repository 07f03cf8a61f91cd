"""The worker class in a real Gunicorn: what it logs when the server stops, and what the
application's ``wsgi.errors`` text looks like in the error log."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from tests.support.server import GunicornServer, is_our_worker
from tests.support.wait import poll

pytestmark = pytest.mark.integration

# What the application writes, in pieces that do not end on line boundaries.
ERRORS_TEXT = ["first line from the app\nsecond ", "line, then a partial", " one\n"]


def errors_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Writes ERRORS_TEXT to wsgi.errors, as an application logging by hand would."""
    errors = environ["wsgi.errors"]
    for piece in ERRORS_TEXT:
        errors.write(piece)
    errors.flush()
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]


def test_wsgi_errors_text_reaches_the_error_log_as_written(
    make_server: Callable[..., GunicornServer],
) -> None:
    # Gunicorn passes its error log's streams (WSGIErrorsWrapper): no prefix per line.
    srv = make_server(app="tests.worker.test_worker_process:errors_app", workers=1)
    assert srv.get("/").status == 200
    text = "".join(ERRORS_TEXT)
    assert poll(lambda: text in srv.log_text(), timeout=10), srv.log_text()
    log = srv.log_text()
    assert text in log
    for line in text.splitlines():
        assert f"[ERROR] {line}" not in log


def test_a_normal_stop_is_not_logged_as_a_dead_master(
    make_server: Callable[..., GunicornServer],
) -> None:
    srv = make_server(workers=2)
    assert srv.get("/").status == 200
    assert srv.stop(timeout=20) == 0
    log = srv.log_text()
    assert "master is gone" not in log
    if is_our_worker():
        assert log.count("Server stopping: worker finished its requests") == 2, log


@pytest.mark.ours_only
def test_a_master_that_died_is_still_reported(
    make_server: Callable[..., GunicornServer],
) -> None:
    srv = make_server(workers=1)
    assert srv.get("/").status == 200
    os.kill(srv.pid, signal.SIGKILL)
    assert poll(lambda: "master is gone, worker exiting" in srv.log_text()
         or "Parent changed, shutting down" in srv.log_text(), timeout=15)
    assert "Server stopping" not in srv.log_text()
