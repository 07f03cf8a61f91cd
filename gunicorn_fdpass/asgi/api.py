"""What a connection of the ASGI worker asks of its worker (:class:`WorkerSide`)."""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any, Protocol

from ..http.keep_alive import After
from ..http.response import ResponseInfo
from ..worker.api import RequestInfo

if TYPE_CHECKING:
    from .connection import AsgiConnection

__all__ = ["WorkerSide"]


class WorkerSide(Protocol):
    """The worker, as its connections see it: Gunicorn's hooks, request counting, the
    lifespan state, and the master link (a connection handed back or ended)."""

    #: The lifespan state (None when the application does not support lifespan).
    state: dict[str, Any] | None

    def request_started(self) -> After:
        """Count a request that is about to be served; say what happens after it."""
        ...

    def others_waiting(self) -> bool:
        """Work waits in the master for a worker: idle connections go back at once."""
        ...

    def stopping(self) -> bool:
        """The worker or the server is stopping: idle connections go back (or close) now."""
        ...

    def access_wanted(self) -> bool:
        """True if the access log or a ``post_request`` hook will read an environ."""
        ...

    def pre_request_wanted(self) -> bool:
        """True if :meth:`pre_request` would do anything (else no request info is made)."""
        ...

    def pre_request(self, req: RequestInfo) -> None: ...

    def post_request(self, req: RequestInfo, environ: dict[str, Any],
                     resp: ResponseInfo) -> None: ...

    def access(self, resp: ResponseInfo, req: RequestInfo, environ: dict[str, Any],
               request_time: datetime.timedelta) -> None: ...

    def hand_back(self, conn: AsgiConnection, leftover: bytes) -> bool:
        """Send the idle connection back to the master (``Park``: the master kept its copy
        of the fd, so only the message travels); False if that failed (then the connection
        closes)."""
        ...

    def ended(self, conn: AsgiConnection) -> None:
        """The connection is closed (``Done``) or was handed back; it is no longer ours."""
        ...
