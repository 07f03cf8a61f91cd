"""Gunicorn settings as this worker reads them: startup validation and the HTTP handler's view.

Settings that cannot work with a master that owns every connection stop startup here with a
message naming the setting (Gunicorn prints a RuntimeError as ``Error: ...`` and exits 1).
"""

from __future__ import annotations

import os
import resource
import sys
from typing import Any, Final

from gunicorn import SERVER
from gunicorn.config import Config

from . import settings as fdpass_settings
from .errors import ConfigurationError
from .http.config import HttpConfig
from .http.request_rules import DEFAULT_SECURE_SCHEME_HEADERS, AddressAllowList, RequestRules
from .master.dispatcher import DispatchSettings

#: The most file descriptors the master raises its soft limit to (Linux's default
#: ``fs.nr_open``): an "unlimited" hard limit is not a reason to ask for more.
MAX_FDS: Final = 1024 * 1024


def validate(cfg: Any) -> None:
    """Raise :class:`ConfigurationError` for a setting this worker cannot honour.

    ``FDPASS_*`` values given to Gunicorn (``-e NAME=VALUE``, ``raw_env``) count even before
    Gunicorn has copied them into ``os.environ``, so this can run before anything is bound.
    """
    if cfg.reuse_port:
        raise ConfigurationError(
            "reuse_port (--reuse-port) cannot be used with gunicorn_fdpass.Worker: with it every "
            "worker opens its own listening socket, but this worker relies on the master "
            "owning the listeners and handing each connection to a free worker. Remove "
            "reuse_port (the master already spreads load evenly)."
        )
    # Unknown FDPASS_* names (typos) and bad values stop startup here, naming the variable.
    fdpass_settings.load({**os.environ, **(getattr(cfg, "env", None) or {})})
    if int(cfg.threads) < 1:
        raise ConfigurationError(f"threads (--threads) must be at least 1, got {cfg.threads}")


_CHECKED_AT_LOAD = False


def validate_on_load() -> None:
    """Gunicorn's worker-class ``setup()`` hook: :func:`validate` before anything is bound.

    Gunicorn 27 calls a worker class's ``check_config`` only after it has bound and logged its
    listeners, but it calls ``setup()`` (no arguments) from ``Config.worker_class`` while the
    arbiter is being built, inside the same ``RuntimeError`` -> ``Error: ...``, exit 1
    handling. The ``Config`` being loaded is the caller's ``self``. Only the first load in a
    process is checked: a reload (HUP) loads the class again, and refusing there would stop a
    running server (a new master after USR2 is a new process, and is checked).
    """
    global _CHECKED_AT_LOAD
    if _CHECKED_AT_LOAD:
        return
    cfg = _loading_config()
    if cfg is None:
        return  # loaded some other way: check_config still validates, later
    _CHECKED_AT_LOAD = True
    validate(cfg)


def _loading_config() -> Any:
    frame = sys._getframe(1)
    for _ in range(4):  # validate_on_load <- Worker.setup <- Config.worker_class
        frame_or_none = frame.f_back
        if frame_or_none is None:
            return None
        frame = frame_or_none
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, Config):
            return candidate
    return None


def _setting(cfg: Any, name: str, default: Any) -> Any:
    value = getattr(cfg, name, default)
    return default if value is None else value


def request_rules(cfg: Any) -> RequestRules:
    """Gunicorn's request limits, compatibility flags and proxy trust, as the parser uses them."""
    secure = _setting(cfg, "secure_scheme_headers", DEFAULT_SECURE_SCHEME_HEADERS)
    return RequestRules(
        limit_request_line=int(cfg.limit_request_line),
        limit_request_fields=int(cfg.limit_request_fields),
        limit_request_field_size=int(cfg.limit_request_field_size),
        permit_unconventional_http_method=bool(
            _setting(cfg, "permit_unconventional_http_method", False)
        ),
        permit_unconventional_http_version=bool(
            _setting(cfg, "permit_unconventional_http_version", False)
        ),
        casefold_http_method=bool(_setting(cfg, "casefold_http_method", False)),
        permit_obsolete_folding=bool(_setting(cfg, "permit_obsolete_folding", False)),
        strip_header_spaces=bool(_setting(cfg, "strip_header_spaces", False)),
        header_map=str(_setting(cfg, "header_map", "drop")),
        # Gunicorn compares header names upper-cased: so do we.
        secure_scheme_headers={str(k).upper(): str(v) for k, v in dict(secure).items()},
        forwarder_headers=frozenset(
            str(h).upper() for h in _setting(cfg, "forwarder_headers", ["SCRIPT_NAME", "PATH_INFO"])
        ),
        forwarded_allow=AddressAllowList(
            _setting(cfg, "forwarded_allow_ips", ["127.0.0.1", "::1"])
        ),
    )


def http_config(cfg: Any, own: fdpass_settings.FdpassSettings, *,
                multithread: bool) -> HttpConfig:
    """The HTTP handler's settings for a worker running under ``cfg`` and ``own``."""
    io_timeout = own.io_timeout
    if cfg.timeout:
        # Give up on a stalled client before the arbiter gives up on the worker.
        io_timeout = min(io_timeout, max(1.0, float(cfg.timeout) / 2))
    return HttpConfig(
        server_software=SERVER,
        url_scheme="https" if cfg.is_ssl else "http",
        script_name=os.environ.get("SCRIPT_NAME", ""),
        multithread=multithread,
        # As Gunicorn's own workers: another process may run the app only with several workers.
        multiprocess=int(cfg.workers) > 1,
        keepalive=float(cfg.keepalive) > 0 and not cfg.is_ssl,
        parkable=not cfg.is_ssl,  # the TLS session lives in the worker
        io_timeout=io_timeout,
        burst=own.burst,
        in_order=own.in_order,
        rules=request_rules(cfg),
        proxy_protocol=proxy_mode(cfg),
        proxy_allow=AddressAllowList(_setting(cfg, "proxy_allow_ips", ["127.0.0.1", "::1"])),
        max_chunked_body=own.max_chunked_body,
    )


def proxy_mode(cfg: Any) -> str:
    """Gunicorn's ``proxy_protocol``: "off", "v1", "v2" or "auto" (older booleans too)."""
    mode = str(_setting(cfg, "proxy_protocol", "off"))
    if mode in ("True", "true"):  # older boolean spelling
        return "auto"
    if mode in ("False", "false", "None"):
        return "off"
    return mode


def raise_fd_limit() -> tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE toward its hard limit (the master holds one fd
    per connection; its workers inherit the limit). Returns (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = MAX_FDS if hard == resource.RLIM_INFINITY else min(hard, MAX_FDS)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft, soft  # e.g. above fs.nr_open: keep what there is
        return soft, target
    return soft, soft


def connections_for_fd_limit(workers: int) -> int:
    """The default ``FDPASS_MAX_CONNECTIONS``: what the current fd limit leaves for client
    connections, with room for the master's other fds (three per worker, listeners, logs,
    epoll), for answered connections lingering on their way out, and for the master's copies
    of the connections its workers are serving (kept until ``Done`` or ``Park``)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = MAX_FDS
    return max(16, (soft - 64 - 3 * max(1, workers)) * 3 // 4)


def dispatch_settings(cfg: Any, own: fdpass_settings.FdpassSettings) -> DispatchSettings:
    """Map Gunicorn's settings and this worker's ``FDPASS_*`` ones onto the dispatcher's.

    ``worker_connections`` keeps Gunicorn's per-worker meaning and is not read here: the
    master's own cap is ``FDPASS_MAX_CONNECTIONS`` (default: from the fd limit)."""
    return DispatchSettings(
        keepalive=0.0 if cfg.is_ssl else float(cfg.keepalive),  # TLS is never parked
        head_timeout=own.head_timeout,
        max_queue=own.max_queue,
        max_connections=own.max_connections or connections_for_fd_limit(int(cfg.workers)),
        shed_queue=own.shed_queue,
        shed_wait=own.shed_wait,
        retry_after=own.retry_after,
        max_head=request_rules(cfg).max_head,
        tls=bool(cfg.is_ssl),
        server_software=SERVER,
        body_buffer=own.body_buffer,
        body_timeout=own.body_timeout,
        proxy_protocol=proxy_mode(cfg),
        proxy_allow=AddressAllowList(_setting(cfg, "proxy_allow_ips", ["127.0.0.1", "::1"])),
    )
