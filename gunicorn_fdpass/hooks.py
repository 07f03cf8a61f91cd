"""Explicit server hooks, for users who prefer to wire the master side in their config file.

Not needed: ``--worker-class gunicorn_fdpass.Worker`` installs the same hook by itself. In a
config file::

    from gunicorn_fdpass.hooks import when_ready  # noqa: F401
"""

from __future__ import annotations

from typing import Any

from .master import arbiter


def when_ready(server: Any) -> None:
    """Start the dispatcher in the Gunicorn master (idempotent)."""
    arbiter.install(server)
