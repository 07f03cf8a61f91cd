"""gunicorn-fdpass: Gunicorn workers whose master accepts and hands connections to workers.

Use it with ``gunicorn --worker-class gunicorn_fdpass.Worker app:app`` (WSGI) or
``gunicorn --worker-class gunicorn_fdpass.ASGIWorker app:app`` (ASGI).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .worker import ASGIWorker, Worker

__all__ = ["ASGIWorker", "Worker"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Imported lazily so that the pure layers (codec, scheduler, WSGI adapter) can be used
    # and tested without importing Gunicorn.
    if name == "Worker":
        from .worker import Worker

        return Worker
    if name == "ASGIWorker":
        from .worker import ASGIWorker

        return ASGIWorker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
