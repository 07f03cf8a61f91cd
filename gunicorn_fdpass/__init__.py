"""gunicorn-fdpass: a Gunicorn worker whose master accepts and hands connections to workers.

Use it with ``gunicorn --worker-class gunicorn_fdpass.Worker app:app``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .worker import Worker

__all__ = ["Worker"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Imported lazily so that the pure layers (codec, scheduler, WSGI adapter) can be used
    # and tested without importing Gunicorn.
    if name == "Worker":
        from .worker import Worker

        return Worker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
