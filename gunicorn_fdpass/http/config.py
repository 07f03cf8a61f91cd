"""The HTTP layer's settings: one frozen object, built once per worker from Gunicorn's
configuration (:func:`gunicorn_fdpass.gunicorn_settings.http_config`). Pure data."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Final

from ..settings import FdpassSettings
from .keep_alive import Policy
from .request_rules import AddressAllowList, RequestRules

__all__ = ["HttpConfig"]

# The FDPASS_* defaults are the one source of the knobs HttpConfig shares with them.
_DEFAULTS: Final = FdpassSettings()


@dataclass(frozen=True)
class HttpConfig:
    """Settings of the HTTP handler, derived from Gunicorn's configuration by the worker."""

    server_software: str  # value of the Server header
    url_scheme: str  # "http" (TLS: "https")
    script_name: str  # SCRIPT_NAME prefix, "" by default
    multithread: bool  # wsgi.multithread
    multiprocess: bool  # wsgi.multiprocess
    keepalive: bool  # may a connection serve more than one request?
    io_timeout: float | None  # socket timeout for a stalled client while in a worker
    # Requests served back to back on one connection before it goes back to the master's
    # queue, behind connections that waited meanwhile: bounds the wait of the others.
    burst: int = _DEFAULTS.burst
    # First come, first served across connections (FDPASS_IN_ORDER).
    in_order: bool = _DEFAULTS.in_order
    # May an idle connection go back to the master? Never under TLS: the session lives in
    # this process. Decided once, from the settings.
    parkable: bool = True
    # Gunicorn's request limits, compatibility flags and proxy trust settings.
    rules: RequestRules = field(default_factory=RequestRules)
    # Gunicorn's proxy_protocol ("off", "v1", "v2", "auto") and proxy_allow_ips.
    proxy_protocol: str = "off"
    proxy_allow: AddressAllowList = field(
        default_factory=lambda: AddressAllowList(["127.0.0.1", "::1"])
    )
    # A chunked request body is read completely before the application runs, up to this many
    # bytes (more: 413), and the application sees it with a CONTENT_LENGTH: frameworks that
    # ignore wsgi.input_terminated (Django) otherwise read nothing. 0: stream it unbuffered,
    # without CONTENT_LENGTH, as Gunicorn does.
    max_chunked_body: int = _DEFAULTS.max_chunked_body

    @cached_property
    def policy(self) -> Policy:
        """The settings the keep-alive decision reads (made once: read per connection)."""
        return Policy(keepalive=self.keepalive, parkable=self.parkable, burst=self.burst,
                      in_order=self.in_order)
