"""gunicorn-fdpass: Gunicorn workers whose master accepts and hands connections to workers.

Use it with ``gunicorn --worker-class gunicorn_fdpass.Worker app:app`` (WSGI) or
``gunicorn --worker-class gunicorn_fdpass.ASGIWorker app:app`` (ASGI).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .compiled import extensions_disabled, prefer_sources

if extensions_disabled():
    prefer_sources()  # before any other module of the package loads

if TYPE_CHECKING:
    from .worker import ASGIWorker, Worker

__all__ = ["ASGIWorker", "Worker"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Imported lazily so that the pure layers (codec, scheduler, WSGI adapter) can be used
    # and tested without importing Gunicorn; the worker package says where each class is.
    if name in __all__:
        from . import worker

        return getattr(worker, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
