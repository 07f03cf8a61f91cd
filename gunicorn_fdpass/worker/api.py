"""What the connection loop and the worker class say to each other: the hooks the worker
implements (:class:`RequestHooks`), what a request looks like to them (:class:`RequestInfo`),
and how a connection ends (:class:`Closed`, :class:`Idle`)."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import FdpassError
from ..http.keep_alive import After
from ..http.request_rules import ParsedRequest
from ..http.response import ResponseInfo

__all__ = [
    "After",
    "Closed",
    "Idle",
    "RequestBodyError",
    "RequestHooks",
    "RequestInfo",
    "ResponseInfo",
    "request_info",
]


@dataclass
class RequestInfo:
    """The request as Gunicorn hooks and the access log see it (``req``)."""

    method: str
    uri: str
    path: str
    query: str
    fragment: str
    version: tuple[int, int]
    headers: list[tuple[str, str]]  # names upper-case, like Gunicorn
    scheme: str
    remote_addr: str | tuple[Any, ...]


def request_info(request: ParsedRequest, scheme: str, client: object) -> RequestInfo:
    """What the hooks and the access log see of ``request`` from ``client`` (a socket
    address), served as ``scheme`` unless a trusted proxy said otherwise."""
    remote: str | tuple[Any, ...]
    if isinstance(client, tuple):
        remote = client
    elif isinstance(client, bytes):
        remote = client.decode("latin-1")
    else:
        remote = str(client or "")
    return RequestInfo(
        method=request.method,
        uri=request.target,
        path=request.path,
        query=request.query,
        fragment=request.fragment,
        version=request.version,
        headers=request.headers,
        scheme=request.scheme or scheme,
        remote_addr=remote,
    )


class RequestHooks(Protocol):
    """Callbacks into the worker (Gunicorn's server hooks, access log, request counting)."""

    def pre_request(self, req: RequestInfo) -> None: ...

    def pre_request_wanted(self) -> bool:
        """False if :meth:`pre_request` would do nothing (Gunicorn's default hook, which
        only writes a debug line, with debug logging off): it is then not called, and the
        request's :class:`RequestInfo` is not built for it."""
        ...

    def post_request(
        self, req: RequestInfo, environ: dict[str, Any], resp: ResponseInfo
    ) -> None: ...

    def access(
        self,
        resp: ResponseInfo,
        req: RequestInfo,
        environ: dict[str, Any],
        request_time: datetime.timedelta,
    ) -> None: ...

    def request_started(self) -> After:
        """Count a request that is about to be served; say what happens after it."""
        ...

    def others_waiting(self) -> bool:
        """True if requests that arrived earlier wait for a worker: then the connection goes
        back to the master, behind them, instead of on to its own next request."""
        ...

    def wsgi_errors(self) -> Any:
        """The stream for one request's ``environ["wsgi.errors"]``."""
        ...

    def access_wanted(self) -> bool:
        """True if the access log or a ``post_request`` hook will read the request's
        environ; else neither :meth:`post_request` nor :meth:`access` is called."""
        ...


@dataclass(frozen=True)
class Closed:
    """The handler shut the connection down; the caller closes the fd."""


@dataclass(frozen=True)
class Idle:
    """The connection is reusable and no complete request is waiting (or others wait longer):
    hand it back to the master."""

    leftover: bytes  # bytes already read that belong to the next request


class RequestBodyError(OSError, FdpassError):
    """Reading ``wsgi.input`` failed: the client went away, stalled, or sent a malformed body.

    It derives from OSError so that applications treating a failed read as an I/O error keep
    working. ``status_hint`` is the status to answer with if nothing was sent yet (None: just
    close the connection).
    """

    def __init__(self, message: str, status_hint: int | None = None) -> None:
        super().__init__(message)
        self.status_hint = status_hint
