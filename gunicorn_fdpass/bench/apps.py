"""The bench's own WSGI app, used by the scenarios that need a slow route or worker ids.

Routes:

- ``/``: a 14-byte plain-text answer;
- ``/slow?ms=N``: the same answer after sleeping N milliseconds (at most 60 000), standing in
  for a request that waits on a database or another service;
- ``/cpu?ms=N``: the same answer after keeping the CPU busy for N milliseconds of the
  process's CPU time (at most 60 000), standing in for a view that computes.

Both work under every worker class (plain ``time.sleep``, a plain loop).

Every response carries ``X-Worker-Pid`` (the serving process), which the fairness scenario
counts. :mod:`.asgi_apps` is the same app for ASGI worker classes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

BODY = b"Hello, World!\n"
BAD_MS = b"ms must be an integer\n"
MAX_SLEEP_MS = 60_000


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """WSGI entry point: ``gunicorn_fdpass.bench.apps:app``."""
    path = environ.get("PATH_INFO", "/")
    if path in ("/slow", "/cpu"):
        seconds = parse_seconds(environ.get("QUERY_STRING", ""))
        if seconds is None:
            return _answer(start_response, "400 Bad Request", BAD_MS)
        if path == "/slow":
            time.sleep(seconds)
        else:
            burn(seconds)
    elif path != "/":
        return _answer(start_response, "404 Not Found", b"not found\n")
    return _answer(start_response, "200 OK", BODY)


def parse_seconds(query: str) -> float | None:
    """The ``ms`` query parameter (default 100) as seconds, clamped to [0, 60 s]; None if it
    is not an integer."""
    try:
        ms = int(parse_qs(query).get("ms", ["100"])[0])
    except ValueError:
        return None
    return min(max(ms, 0), MAX_SLEEP_MS) / 1000.0


def burn(seconds: float) -> None:
    """Spin until this thread has used ``seconds`` of CPU time (not wall time: a view that
    computes costs the same CPU however busy the machine is)."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def _answer(start_response: Callable[..., Any], status: str, body: bytes) -> list[bytes]:
    start_response(status, [
        ("Content-Type", "text/plain"),
        ("Content-Length", str(len(body))),
        ("X-Worker-Pid", str(os.getpid())),
    ])
    return [body]
