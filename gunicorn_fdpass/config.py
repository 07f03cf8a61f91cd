"""Gunicorn settings as this worker reads them: startup validation and the HTTP handler's view.

Settings that cannot work with a master that owns every connection stop startup here with a
message naming the setting (Gunicorn prints a RuntimeError as ``Error: ...`` and exits 1).
"""

from __future__ import annotations

import os
from typing import Any

from gunicorn import SERVER

from . import settings as fdpass_settings
from .connection import HttpConfig
from .errors import ConfigurationError

#: Used for a Gunicorn request limit set to 0 ("unlimited"): a head must still end somewhere.
_UNLIMITED_LINE = 64 * 1024
_UNLIMITED_FIELDS = 32 * 1024


def validate(cfg: Any) -> None:
    """Raise :class:`ConfigurationError` for a setting this worker cannot honour."""
    if cfg.reuse_port:
        raise ConfigurationError(
            "reuse_port (--reuse-port) cannot be used with gunicorn_fdpass.Worker: with it every "
            "worker opens its own listening socket, but this worker relies on the master "
            "owning the listeners and handing each connection to a free worker. Remove "
            "reuse_port (the master already spreads load evenly)."
        )
    # Unknown FDPASS_* names (typos) and bad values stop startup here, naming the variable.
    fdpass_settings.load()
    if int(cfg.threads) < 1:
        raise ConfigurationError(f"threads (--threads) must be at least 1, got {cfg.threads}")


def max_header_bytes(cfg: Any) -> int:
    """The largest request head Gunicorn's limits allow: request line plus all fields."""
    line = int(cfg.limit_request_line) or _UNLIMITED_LINE
    fields = int(cfg.limit_request_fields) or _UNLIMITED_FIELDS
    field_size = int(cfg.limit_request_field_size) or _UNLIMITED_LINE
    return line + 2 + fields * (field_size + 2) + 2


def http_config(cfg: Any, *, multithread: bool) -> HttpConfig:
    """The HTTP handler's settings for a worker running under ``cfg``."""
    timeout = float(cfg.timeout)
    return HttpConfig(
        server_software=SERVER,
        url_scheme="https" if cfg.is_ssl else "http",
        script_name=os.environ.get("SCRIPT_NAME", ""),
        max_header_bytes=max_header_bytes(cfg),
        multithread=multithread,
        # As Gunicorn's own workers: another process may run the app only with several workers.
        multiprocess=int(cfg.workers) > 1,
        keepalive=float(cfg.keepalive) > 0 and not cfg.is_ssl,
        io_timeout=timeout if timeout > 0 else None,
    )
