"""The smallest WSGI app: ``gunicorn --worker-class gunicorn_fdpass.Worker examples.hello:app``."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = b"Hello, World!\n"
    start_response("200 OK", [
        ("Content-Type", "text/plain"),
        ("Content-Length", str(len(body))),
        ("X-Worker-Pid", str(os.getpid())),
    ])
    return [body]
