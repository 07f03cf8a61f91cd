"""The Gunicorn worker class: ``gunicorn --worker-class gunicorn_fdpass.Worker app:app``.

Thin by design: it maps Gunicorn's ``cfg`` onto the HTTP handler's settings, receives
connections from the master over its channel, serves them with
:func:`~gunicorn_fdpass.worker.connection.serve_connection`, and reports back (``Done``, or
``Park`` for a connection handed back: the master kept its copy of the fd). With
``--threads N`` it serves N connections at once and announces a capacity of N to the master.
It implements the
:class:`~gunicorn_fdpass.worker.api.RequestHooks` the connection loop calls.
"""

from __future__ import annotations

import os
import selectors
import socket
import ssl
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Any, Final

from gunicorn import sock as gunicorn_sock
from gunicorn.http.wsgi import WSGIErrorsWrapper

from .. import settings as fdpass_settings
from ..errors import PeerGone
from ..gunicorn_settings import http_config
from ..link import messages
from ..link.channel import socket_from_fd
from .api import After, Closed, Idle
from .connection import serve_connection
from .linked import LinkedWorker

#: Seconds between looks at the channel while handoffs keep coming (when none does, the
#: worker waits in select() on the channel too). A graceful stop's Closing is noticed this
#: late at most: a response in between may still keep its connection alive, and the master,
#: which watches idle connections until it closes, ends it then.
_CHANNEL_READ_EVERY: Final = 0.01


class Worker(LinkedWorker):
    """A pre-forked WSGI worker: one connection per thread (``--threads``, default 1)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._nr_lock = threading.Lock()
        self._ssl_context: ssl.SSLContext | None = None
        self._wsgi_errors: WSGIErrorsWrapper | None = None

    def announced_capacity(self) -> int:
        return max(1, int(self.cfg.threads))

    # -- main loop -----------------------------------------------------------------------

    def run(self) -> None:
        own = fdpass_settings.load()  # validated by the master at startup
        self.http = http_config(self.cfg, own, multithread=self.capacity > 1)
        if self.cfg.is_ssl:
            self._ssl_context = gunicorn_sock.ssl_context(self.cfg)
        pool = ThreadPoolExecutor(self.capacity) if self.capacity > 1 else None
        in_flight: set[Future[None]] = set()
        selector = selectors.DefaultSelector()
        selector.register(self.channel.fileno(), selectors.EVENT_READ)
        selector.register(self.inbox.fileno(), selectors.EVENT_READ)
        selector.register(self.PIPE[0], selectors.EVENT_READ)
        # The heartbeat is a file-time update (a syscall): once per interval is enough for the
        # arbiter's --timeout check, and spares one syscall per request.
        heartbeat_every = min(1.0, (self.timeout or 0.5) / 2)
        next_heartbeat = 0.0
        next_channel_read = 0.0
        channel_fd = self.channel.fileno()
        try:
            self.channel.send(messages.Hello(self.capacity, os.getpid()))
            while self.alive:
                now = time.monotonic()
                if now >= next_heartbeat:
                    self.notify()
                    next_heartbeat = now + heartbeat_every
                    if self.ppid != os.getppid():
                        self.log.info("Parent changed, shutting down: %s", self)
                        break
                for key, _ in selector.select(self.timeout or 0.5):
                    if key.fd == channel_fd:
                        # Only when it has something: most wake-ups are a handoff, and a
                        # read that finds nothing costs a system call and an exception.
                        self._read_channel()
                    elif key.fd == self.PIPE[0]:
                        self._drain_wakeup_pipe()
                # Read a handoff only when a slot is free (one thread: after serving the last
                # one): until then it stays in the inbox, where the master can take it back.
                while self.alive and (received := self.inbox.recv()) is not None:
                    message = received.message
                    if not isinstance(message, messages.Handoff):
                        self.log.error("unexpected message from the master: %r", message)
                        continue
                    if received.fd is None:
                        self.channel.send(messages.Refused(message.conn_id))
                        continue
                    # No acknowledgement: the master keeps its copy until Done or Park, and
                    # takes back only what is still unread in the inbox.
                    if pool is None:
                        self._serve(message, received.fd)
                        # Between handoffs (the next one may be waiting already), a look at
                        # the channel for Closing: at most every few ms, since it mostly
                        # finds nothing and costs a system call.
                        now = time.monotonic()
                        if now >= next_channel_read:
                            self._read_channel()
                            next_channel_read = now + _CHANNEL_READ_EVERY
                    else:
                        in_flight.add(pool.submit(self._serve, message, received.fd))
                if in_flight:
                    in_flight = {f for f in in_flight if not f.done()}
            # Handoffs still unread in the inbox were never read: the master takes them back.
            self.channel.send(messages.Draining())
            self._finish(in_flight)
        except PeerGone:
            self._master_hung_up()
        finally:
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
            selector.close()
            self.channel.close()
            self.inbox.close()

    def _read_channel(self) -> None:
        """Act on what the master said besides handoffs (so far only ``Closing``)."""
        while (received := self.channel.recv()) is not None:
            if isinstance(received.message, messages.Closing):
                self._closing = True
            else:
                self.log.error("unexpected message from the master: %r", received.message)
                if received.fd is not None:
                    os.close(received.fd)

    def _finish(self, in_flight: set[Future[None]]) -> None:
        """Let requests in progress complete, while telling the arbiter we are alive."""
        while in_flight:
            self.notify()
            _, pending = wait_futures(in_flight, timeout=1.0)
            in_flight = set(pending)

    def _drain_wakeup_pipe(self) -> None:
        try:
            while os.read(self.PIPE[0], 4096):
                pass
        except BlockingIOError:
            pass

    # -- one connection ------------------------------------------------------------------

    def _serve(self, handoff: messages.Handoff, fd: int) -> None:
        conn_id = handoff.conn_id
        client = socket_from_fd(fd, handoff.family)
        try:
            conn: socket.socket = client
            if self._ssl_context is not None:
                conn = self._ssl_context.wrap_socket(
                    client, server_side=True,
                    suppress_ragged_eofs=self.cfg.suppress_ragged_eofs,
                    do_handshake_on_connect=self.cfg.do_handshake_on_connect)
            outcome = serve_connection(conn, handoff.prefix, self.wsgi, self.http, self, self.log)
        except Exception:
            self.log.exception("Error serving connection")
            outcome = Closed()
        try:
            # Idle only comes from the keep-alive decision, which never hands back a
            # connection that cannot be parked (TLS); the leftover must also fit a message.
            if isinstance(outcome, Idle) and len(outcome.leftover) <= messages.MAX_PAYLOAD:
                # The master still has its copy of the fd: only the message travels.
                client.close()
                # The master's family when it sent one: socket.family makes an enum each time.
                family = handoff.family or client.family
                self.channel.send(messages.Park(conn_id, outcome.leftover, family))
            else:
                client.close()
                self.channel.send(messages.Done(conn_id))
        except PeerGone:
            client.close()
            self.alive = False

    # -- RequestHooks, as seen by the HTTP handler ---------------------------------------

    def request_started(self) -> After:
        """Count a request; say what happens to its connection after it (see ``After``)."""
        with self._nr_lock:
            self.nr += 1
            last: bool = self.nr >= self.max_requests
        if last and self.alive:
            self.log.info("Autorestarting worker after current request.")
            self.alive = False
            os.write(self.PIPE[1], b"1")
        if self._closing:
            return After.CLOSE
        # The connection stays open and goes back to the master for another worker.
        return After.HAND_BACK if last else After.CONTINUE

    def wsgi_errors(self) -> Any:
        """What Gunicorn's own workers give: the error log's streams, written as the
        application wrote (no log-line prefix). Made once, and anew after the log files
        were reopened (USR1: new streams) or an application closed it."""
        errors = self._wsgi_errors
        if errors is None or errors.closed:
            errors = self._wsgi_errors = WSGIErrorsWrapper(self.cfg)
        return errors

    def handle_usr1(self, sig: int, frame: Any) -> None:
        """Gunicorn's USR1: reopen the log files; wsgi.errors then writes to the new ones."""
        super().handle_usr1(sig, frame)
        self._wsgi_errors = None


__all__ = ["Worker"]
