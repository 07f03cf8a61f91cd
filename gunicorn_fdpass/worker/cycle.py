"""One request's exchange on a connection: hooks, environ, the application, its response,
and the keep-alive decision at the end. Created fresh for every request, so nothing of one
request is ever reset by hand for the next."""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Iterable
from typing import IO, TYPE_CHECKING, Any

from ..http.body_framing import RequestBody
from ..http.keep_alive import After, Next, closes, connection_tokens, decide, request_facts
from ..http.request_rules import ParsedRequest
from ..http.response import Abort, Response
from ..wsgi import FileWrapper, InputStream, build_environ
from .api import RequestBodyError, RequestInfo, request_info
from .body_reader import BodyReader
from .transport import ClientGone

if TYPE_CHECKING:
    from .connection import ConnectionLoop

__all__ = ["RequestCycle"]


class RequestCycle:
    """The request-response cycle of one request (the connection state stays in ``conn``)."""

    # Slots: made for every connection or request; their attributes are read throughout.
    __slots__ = ("_req", "after", "conn", "facts", "reader", "request", "response")

    def __init__(self, conn: ConnectionLoop, request: ParsedRequest, body: RequestBody) -> None:
        self.conn = conn
        self.request = request
        self.reader = BodyReader(conn, request, body)
        self.facts = request_facts(request.version, connection_tokens(request.headers),
                                   request.must_close)
        self.after = After.CONTINUE
        self.response: Response | None = None
        self._req: RequestInfo | None = None

    def run(self, served: int) -> Next:
        """Serve the request; say what happens to the connection next (``served``: requests
        served on it so far, this one included)."""
        try:
            return self._run(served)
        finally:
            # The response's starter holds our write(), a reference cycle: dropping the
            # response breaks it, so that everything of the request is freed at once by
            # reference counting rather than left to the garbage collector, whose passes
            # (triggered by what is left) cost every request.
            self.response = None

    def _run(self, served: int) -> Next:
        conn = self.conn
        started = time.monotonic()
        try:
            self.after = conn.hooks.request_started()
        except Exception:
            conn.log.exception("Error in request_started hook")
            self.after = After.CLOSE
        spooled: IO[bytes] | None = None
        if self.request.chunked and conn.config.max_chunked_body > 0:
            got = self.reader.buffer_chunked(conn.config.max_chunked_body)
            if isinstance(got, int):
                if got:
                    conn.send_error(got)
                return Next.CLOSE
            spooled = got
        try:
            self._respond(started, spooled)
        finally:
            if spooled is not None:
                spooled.close()
        # Closing anyway: no point reading what is left of the body, or asking whether
        # others wait.
        if closes(self.facts, conn.policy, self.after) or not self._settled():
            return Next.CLOSE
        return decide(self.facts, conn.policy, self.after, served=served,
                      others_waiting=conn.hooks.others_waiting())

    def _settled(self) -> bool:
        """After the response: was the exchange complete, is the connection ready for more?
        If not, the exchange is broken."""
        resp = self.response
        if (resp is None or not resp.finished or self.conn.transport.dead
                or self.reader.error is not None or not self.reader.drain()):
            self.facts.broken = True
            return False
        return True

    def _respond(self, started: float, spooled: IO[bytes] | None) -> None:
        """Run the application and send its response, then the hooks."""
        conn = self.conn
        config = conn.config
        request = self.request
        wsgi_input: Any = spooled
        if spooled is None:
            wsgi_input = InputStream(self.reader.read_chunk, on_first_read=self._first_read)
        wsgi_errors = conn.hooks.wsgi_errors()
        environ = build_environ(
            request,
            server=conn.server_address,
            client=conn.client_addr,
            url_scheme=config.url_scheme,
            script_name=config.script_name,
            wsgi_input=wsgi_input,
            wsgi_errors=wsgi_errors,
            multithread=config.multithread,
            multiprocess=config.multiprocess,
            server_software=config.server_software,
        )
        if spooled is not None:
            # The body is now length-delimited; a proxying application must not forward both.
            environ["CONTENT_LENGTH"] = str(self.reader.body.received)
            environ.pop("HTTP_TRANSFER_ENCODING", None)
        if conn.proxy is not None:
            environ.update(conn.proxy.environ())
        resp = self.response = Response(
            request, self.facts, conn.policy, self.after,
            server_software=config.server_software, log=conn.log,
            unread_body=self.reader.forbids_reuse, write=self._write,
        )
        try:
            self._run_app(environ, resp)
        finally:
            flush = getattr(wsgi_errors, "flush", None)
            if flush is not None:
                flush()
            self._report(environ, resp, started)

    def _report(self, environ: dict[str, Any], resp: Response, started: float) -> None:
        conn = self.conn
        if not conn.hooks.access_wanted():
            return
        req = self._request_info()
        info = resp.final_info()
        try:
            conn.hooks.post_request(req, environ, info)
        except Exception:
            conn.log.exception("Error in post_request hook")
        # No status at all means no response was even attempted (e.g. the client stalled
        # while sending the body): there is nothing for the access log to describe.
        if info.status:
            try:
                elapsed = datetime.timedelta(seconds=time.monotonic() - started)
                conn.hooks.access(info, req, environ, elapsed)
            except Exception:
                conn.log.exception("Error in access hook")

    def _run_app(self, environ: dict[str, Any], resp: Response) -> None:
        log = self.conn.log
        hooks = self.conn.hooks
        result: Iterable[bytes] | None = None
        try:
            try:
                if hooks.pre_request_wanted():
                    hooks.pre_request(self._request_info())
                result = self.conn.app(environ, resp.starter.start_response)
                if not (isinstance(result, FileWrapper) and self._sendfile(resp, result)):
                    # A list or tuple is all there at once, so joining its pieces costs no
                    # latency; anything else may be a stream, so each piece goes out as it
                    # comes.
                    in_memory = isinstance(result, (list, tuple))
                    for chunk in result:
                        if resp.body(chunk) or not in_memory:
                            self._flush()
                resp.finish()
                self._flush(last=True)
            finally:
                if result is not None:
                    self._close_iterable(result)
        except ClientGone as exc:
            log.debug("Client %s went away: %s", self.conn.client_addr, exc)
        except Abort:
            self._abort()
        except RequestBodyError as exc:
            # The application let a failed body read escape: the client is at fault.
            log.warning("Invalid request body from %s: %s", self.conn.client_addr, exc)
            if resp.committed:
                self._abort()
            elif exc.status_hint is not None:
                self._send_error(resp, exc.status_hint)
        except Exception:
            log.exception("Error handling request %s", self.request.target)
            if resp.committed:
                self._abort()
            else:
                self._send_error(resp, 500)

    def _close_iterable(self, result: Iterable[bytes]) -> None:
        close = getattr(result, "close", None)
        if close is None:
            return
        try:
            close()
        except Exception:
            self.conn.log.exception("Error closing the response iterable")

    # -- output: the driver of the sans-IO Response --------------------------------------

    def _write(self, data: bytes) -> None:
        """PEP 3333 ``write()``: the data goes out before this returns."""
        resp = self.response
        assert resp is not None
        if not resp.starter.started:
            raise RuntimeError("write() called before start_response()")
        resp.body(data)
        self._flush()

    def _flush(self, last: bool = False) -> None:
        """Send what the response queued; ClientGone if the client cannot be sent to.
        ``last``: the response is complete; when the connection ends after it anyway, the
        end of our side goes out with its last bytes (Transport.send_last)."""
        resp = self.response
        assert resp is not None
        data = resp.take()
        if data:
            conn = self.conn
            if last and closes(self.facts, conn.policy, self.after):
                conn.transport.send_last(data)
            else:
                conn.transport.sendall(data)
        resp.sent()

    def _sendfile(self, resp: Response, wrapper: FileWrapper) -> bool:
        """Send a wsgi.file_wrapper's file with sendfile(); False to fall back to iterating
        (no descriptor, no Content-Length to bound it, a non-blocking socket, or TLS, whose
        encryption happens in user space)."""
        transport = self.conn.transport
        if not transport.plain or not resp.starter.started:
            return False
        fd = wrapper.fileno()
        if fd is None:
            return False
        count = resp.file_body()
        if count is None or (count and not transport.blocking()):
            return False
        if count:
            try:
                offset = wrapper.filelike.tell()
            except (OSError, ValueError, AttributeError):
                offset = os.lseek(fd, 0, os.SEEK_CUR)
            self._flush()  # the head goes first
            sent = transport.sendfile(wrapper.filelike, offset, count)
            if sent:
                resp.file_sent(sent)
        return True

    def _send_error(self, resp: Response, status_code: int) -> None:
        """Answer with the server's own error instead of the application's response."""
        data = resp.error(status_code)
        if data and self.conn.send_quietly(data):
            resp.sent()

    def _abort(self) -> None:
        """Drop a connection whose response cannot be completed: the client must see a
        truncated message, never a second response."""
        self.facts.broken = True
        try:
            self._flush()
        except ClientGone:
            pass
        self.conn.transport.abort()

    # -- request side ----------------------------------------------------------------------

    def _first_read(self) -> None:
        resp = self.response
        self.reader.send_continue(response_begun=resp is not None and resp.committed)

    def _request_info(self) -> RequestInfo:
        """What the hooks and the access log see of the request: made once, when one of
        them wants it (the default hooks, with the access log off, do not)."""
        req = self._req
        if req is None:
            req = self._req = request_info(self.request, self.conn.config.url_scheme,
                                           self.conn.client_addr)
        return req
