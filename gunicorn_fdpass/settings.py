"""This worker's own settings, read from ``FDPASS_*`` environment variables.

Gunicorn builds its command line parser before it imports a worker class, and it silently
drops unknown names from config files, so a worker cannot add real Gunicorn settings. The
environment is the one channel that reaches the master from the shell, from Gunicorn's command
line (``-e FDPASS_HEAD_TIMEOUT=5``) and from a config file (``raw_env = [...]``) alike. Every
``FDPASS_*`` variable (in any case) is checked at startup: an unknown name (a typo, or a known
name in the wrong case) or a bad value stops Gunicorn with a message naming it.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Final

from .errors import ConfigurationError

PREFIX: Final = "FDPASS_"

#: Variables read elsewhere, at import time: ``FDPASS_NO_EXTENSIONS=1`` runs pure Python (the
#: master's fast path without its C core, and no module compiled by mypyc; see
#: :mod:`gunicorn_fdpass.compiled`).
READ_AT_IMPORT: Final = frozenset({"FDPASS_NO_EXTENSIONS"})


@dataclass(frozen=True, slots=True)
class FdpassSettings:
    """Knobs Gunicorn has no setting for. Field ``x`` is variable ``FDPASS_X``."""

    #: Seconds a new connection may take to send a complete request head (and a parked one,
    #: once its next request has started). Past it the master answers 408 if a head had
    #: started, or just closes a silent connection. No worker is involved meanwhile.
    head_timeout: float = 10.0
    #: Connections with a complete request waiting for a free worker. When full, the master
    #: stops accepting, so further clients wait in the kernel backlog (``--backlog``).
    max_queue: int = 1000
    #: Load shedding by queue length: a request that would queue behind this many others is
    #: answered ``503`` at once. 0 turns it off.
    shed_queue: int = 0
    #: Load shedding by wait: a request that waited this many seconds for a worker is
    #: answered ``503``. 0 turns it off.
    shed_wait: float = 0.0
    #: Seconds sent in ``Retry-After`` with a 503.
    retry_after: int = 1
    #: Requests a worker serves back to back on one keep-alive connection before handing it
    #: back to the master's queue, so that connections waiting meanwhile are not starved.
    burst: int = 16
    #: First come, first served across connections: a worker goes on with a keep-alive
    #: connection's next request only while no request that arrived earlier waits for a
    #: worker; else the connection goes back to the master behind them. 0: a worker goes on
    #: (up to ``burst`` requests) whatever waits -- more keep-alive throughput for tiny
    #: requests, at the price of request order and tail latency.
    in_order: bool = True
    #: Seconds a worker waits on a stalled client (a slow request body, a client that does not
    #: read the response). Bounds how long a slow client can occupy a worker slot.
    io_timeout: float = 10.0
    #: If set, the master writes its live numbers (JSON) to this file once a second.
    stats_file: str = ""
    #: Bytes of a chunked request body a worker buffers (spooling to a temporary file past
    #: 1 MiB) so that the application gets a CONTENT_LENGTH -- frameworks such as Django
    #: ignore ``wsgi.input_terminated`` and read nothing otherwise. Larger bodies get 413.
    #: 0 streams chunked bodies unbuffered, as Gunicorn's own workers do.
    max_chunked_body: int = 64 * 1024 * 1024
    #: ASGI worker only: seconds an idle keep-alive connection stays in its worker waiting
    #: for its next request before it goes back to the master, which then places that
    #: request on the least-loaded worker. 0 hands every idle connection back at once.
    asgi_idle: float = 0.5
    #: A request body of at most this many bytes (Content-Length or chunked) waits in the
    #: master until it has all arrived, so a slow upload costs no worker; larger bodies go to
    #: a worker with the head, as before. 0 turns it off.
    body_buffer: int = 64 * 1024
    #: Seconds such a body may take to arrive once its head is complete (then 408);
    #: 0: the head timeout.
    body_timeout: float = 0.0
    #: Connections the master holds at most (waiting for a head or body, parked, queued).
    #: When reached, the oldest one whose head is incomplete is answered 408 to make room
    #: (then the oldest idle parked one). 0: from the master's file-descriptor limit.
    max_connections: int = 0


def _positive(kind: Callable[[str], Any], *, zero_ok: bool) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value < 0 or (value == 0 and not zero_ok):
            raise ValueError(f"must be {'zero or more' if zero_ok else 'more than zero'}")
        return value
    return parse


def _flag(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be 1 or 0")


_PARSERS: Final[dict[str, Callable[[str], Any]]] = {
    "head_timeout": _positive(float, zero_ok=False),
    "max_queue": _positive(int, zero_ok=False),
    "shed_queue": _positive(int, zero_ok=True),
    "shed_wait": _positive(float, zero_ok=True),
    "retry_after": _positive(int, zero_ok=True),
    "burst": _positive(int, zero_ok=False),
    "in_order": _flag,
    "io_timeout": _positive(float, zero_ok=False),
    "stats_file": str,
    "max_chunked_body": _positive(int, zero_ok=True),
    "asgi_idle": _positive(float, zero_ok=True),
    "body_buffer": _positive(int, zero_ok=True),
    "body_timeout": _positive(float, zero_ok=True),
    "max_connections": _positive(int, zero_ok=True),
}


def load(environ: Mapping[str, str] | None = None) -> FdpassSettings:
    """Read and check every ``FDPASS_*`` variable; raise :class:`ConfigurationError`."""
    env = os.environ if environ is None else environ
    known = {f"{PREFIX}{f.name.upper()}": f.name for f in fields(FdpassSettings)}
    values: dict[str, Any] = {}
    for name, text in env.items():
        # Any case counts as ours: ``fdpass_head_timeout`` is a mistake to point out, not a
        # variable of someone else's to ignore (environment names are case-sensitive).
        if not name.upper().startswith(PREFIX) or name in READ_AT_IMPORT:
            continue
        field = known.get(name)
        if field is None:
            close = difflib.get_close_matches(name.upper(), [*known, *READ_AT_IMPORT], n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigurationError(
                f"unknown setting {name}{hint}; gunicorn_fdpass knows: {', '.join(sorted(known))}"
            )
        try:
            values[field] = _PARSERS[field](text.strip())
        except ValueError as exc:
            raise ConfigurationError(f"bad value for {name}: {text!r} ({exc})") from None
    return FdpassSettings(**values)
