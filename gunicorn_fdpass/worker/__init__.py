"""Runs in a worker process: the Gunicorn worker classes and their connection loops.

- :mod:`.wsgi_worker`: ``Worker``, the WSGI class Gunicorn loads
  (``gunicorn_fdpass.worker:Worker``, ``egg:gunicorn-fdpass#fdpass``).
- :mod:`.asgi_worker`: ``ASGIWorker``, the ASGI class (``gunicorn_fdpass.ASGIWorker``,
  ``egg:gunicorn-fdpass#asgi``); its connections live in :mod:`gunicorn_fdpass.asgi`.
- :mod:`.connection`: ``serve_connection`` and the per-connection ``ConnectionLoop``.
- :mod:`.cycle`: ``RequestCycle``, one request's exchange, made fresh per request;
  :mod:`.body_reader`: its body from the socket.
- :mod:`.transport`: the client socket; :mod:`.api`: the hooks and outcomes shared with
  ``Worker``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .asgi_worker import ASGIWorker
    from .wsgi_worker import Worker

__all__ = ["ASGIWorker", "Worker"]


#: Where each worker class lives.
_CLASSES = {"Worker": ".wsgi_worker", "ASGIWorker": ".asgi_worker"}


def __getattr__(name: str) -> Any:
    # Lazily: gunicorn_fdpass.asgi uses this package's api module, and the ASGI worker
    # class imports gunicorn_fdpass.asgi; neither class is needed to import the other.
    module = _CLASSES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)
