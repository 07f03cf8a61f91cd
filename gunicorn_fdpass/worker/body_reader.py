"""One request's body, read from the socket through h11 (blocking): ``wsgi.input``'s source,
``100 Continue``, buffering a chunked body, and draining what the application left."""

from __future__ import annotations

import tempfile
from typing import IO, TYPE_CHECKING, Final, cast

from ..http.body_framing import RequestBody
from ..http.request_rules import ParsedRequest, Rejected
from ..http.serialize import CONTINUE
from .api import RequestBodyError
from .transport import RECV_SIZE, ClientGone

if TYPE_CHECKING:
    from .connection import ConnectionLoop

__all__ = ["MAX_DRAIN", "BodyReader"]

#: How much unread request body we are willing to read and discard to keep a connection
#: alive; beyond that, closing is cheaper than swallowing an upload nobody wanted.
MAX_DRAIN: Final = 64 * 1024
# A buffered chunked body stays in memory up to this size, then spills to a temporary file.
_SPOOL_IN_MEMORY = 1024 * 1024


class BodyReader:
    """The body of one request. Created with the request; nothing carries over to the next."""

    # Slots: made for every connection or request; their attributes are read throughout.
    __slots__ = ("body", "conn", "continue_due", "error")

    def __init__(self, conn: ConnectionLoop, request: ParsedRequest, body: RequestBody) -> None:
        self.conn = conn
        self.body = body
        self.error: RequestBodyError | None = None
        # The client waits for 100 Continue and nothing asked for the body yet.
        self.continue_due = request.expect_continue and not body.done

    def read_chunk(self) -> bytes:
        """Next piece of the request body for wsgi.input (from h11); b"" at its end."""
        if self.error is not None:
            raise self.error
        body = self.body
        conn = self.conn
        while True:
            try:
                data = body.next_data()
            except Rejected as exc:
                raise self._failed(f"invalid body: {exc.reason}", exc.status_hint) from None
            if data is not None:
                return data
            # h11 needs more: from what was read already, else from the socket, and never
            # more than it may take (for a Content-Length body: not past its end).
            wants = body.wants()
            if conn.buf or body.chunked:
                if not conn.buf:
                    conn.buf += self._recv(RECV_SIZE)
                data = bytes(conn.buf[:wants])
                del conn.buf[:wants]
            else:
                # Straight from the socket, never past the end of the body: no buffer copy.
                data = self._recv(min(RECV_SIZE, wants))
            body.receive(data)

    def send_continue(self, response_begun: bool) -> None:
        """Called before the first body read: the client may be waiting for 100 Continue."""
        if not self.continue_due:
            return
        self.continue_due = False
        if response_begun:  # an interim response is too late once the final one began
            return
        try:
            self.conn.transport.sendall(CONTINUE)
        except ClientGone as exc:
            raise self._failed(f"client went away: {exc}") from None

    def forbids_reuse(self) -> bool:
        """True if what is left of the body already rules out another request."""
        if self.continue_due:
            # The application never read the body, so we never asked for it: the client may
            # or may not send it now, and the connection cannot be trusted for another request.
            return True
        # Too much unread body to drain after the response: say now that we will close.
        remaining = self.body.remaining
        return remaining is not None and remaining > MAX_DRAIN

    def drain(self) -> bool:
        """Read and discard what the application left of the body (bounded); True if the
        connection is then ready for the next request (h11's read-ahead put back in front)."""
        budget = MAX_DRAIN
        while not self.body.done:
            try:
                budget -= len(self.read_chunk())
            except RequestBodyError:
                return False
            if budget < 0:
                self.conn.log.debug("Large unread request body from %s: closing",
                                    self.conn.client_addr)
                return False
        trailing = self.body.trailing()
        if trailing is None:  # cannot happen once the body was read to its end
            return False
        if trailing:
            self.conn.buf[:0] = trailing
        return True

    def buffer_chunked(self, limit: int) -> IO[bytes] | int:
        """Read a whole chunked body into a spooled temporary file, or say which error to
        answer with (0: none, just close)."""
        log = self.conn.log
        # Not a context manager: on success the file outlives this call (the caller closes it).
        spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)  # noqa: SIM115
        try:
            self.send_continue(response_begun=False)
            while chunk := self.read_chunk():
                if self.body.received > limit:
                    log.warning("Chunked request body from %s is over %d bytes: refused",
                                self.conn.client_addr, limit)
                    spool.close()
                    return 413
                spool.write(chunk)
        except RequestBodyError as exc:
            log.warning("Invalid request body from %s: %s", self.conn.client_addr, exc)
            spool.close()
            return exc.status_hint or 0
        except OSError as exc:  # the temporary file (disk full...)
            log.error("Cannot buffer a chunked request body: %s", exc)
            spool.close()
            return 500
        spool.seek(0)
        return cast(IO[bytes], spool)

    def _recv(self, size: int) -> bytes:
        conn = self.conn
        if conn.eof:
            data = b""
        else:
            try:
                data = conn.transport.recv(size)
            except TimeoutError:
                raise self._failed("timed out reading the request body") from None
            except OSError as exc:
                raise self._failed(f"error reading the request body: {exc}") from exc
        if not data:
            conn.eof = True
            error = self.body.eof_error()
            raise self._failed(
                "client closed the connection in the request body",
                error.status_hint if error is not None else None,
            )
        return data

    def _failed(self, message: str, status_hint: int | None = None) -> RequestBodyError:
        self.error = RequestBodyError(message, status_hint)
        return self.error
