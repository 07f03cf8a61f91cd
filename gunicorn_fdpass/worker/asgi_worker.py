"""The ASGI worker class: ``gunicorn -k gunicorn_fdpass.ASGIWorker app:app``.

One asyncio event loop (uvloop when installed, as Gunicorn's ``--asgi-loop auto``) serves up
to ``--worker-connections`` connections at once, all handed over by the master, which never
lets a worker accept. The worker announces that number as its capacity, so the master's
least-busy rule puts every new connection on the worker with the fewest open connections.

- The inbox is read (``loop.add_reader``) only while the worker has room; each handoff is
  served by an :class:`~gunicorn_fdpass.asgi.connection.AsgiConnection` task (the master
  keeps its copy of the fd until ``Done`` or ``Park``). A plain connection's request head is
  read at once and answered on the socket itself; it moves to an event-loop transport only
  when it has to wait (see :mod:`~gunicorn_fdpass.asgi.direct`).
- Connections that end send ``Done`` (one message for all that end in one turn of the
  loop); an idle keep-alive connection goes back to the master with ``Park`` after
  ``FDPASS_ASGI_IDLE`` seconds without a request (at once while the worker or the server is
  stopping, or while work waits in the master).
- A timer callback on the loop itself sends the heartbeat, so ``--timeout`` kills a worker
  whose event loop is blocked; the same callback ends waits that lasted too long.
- Lifespan startup runs before the worker says ``Hello`` (no connection arrives earlier);
  its shutdown after the last connection.
- A graceful stop (SIGTERM, ``max_requests``, the master's ``Closing``) sends ``Draining``,
  hands idle connections back, lets requests in progress finish, and closes WebSockets with
  1001 once ``--graceful-timeout`` has passed since the stop began.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import time
from typing import Any, Final

from gunicorn import sock as gunicorn_sock

from .. import settings as fdpass_settings
from ..asgi.config import asgi_config
from ..asgi.connection import AsgiConnection
from ..asgi.direct import DirectTransport, ready_bytes
from ..asgi.lifespan import Lifespan, LifespanFailed
from ..asgi.loop import new_event_loop
from ..errors import PeerGone
from ..gunicorn_settings import http_config
from ..http.keep_alive import After
from ..link import messages
from ..link.channel import socket_from_fd
from .linked import LinkedWorker

__all__ = ["ASGIWorker"]

#: Seconds between two runs of the loop's timer callback (time limits of the connections).
TICK: Final = 0.1
#: Gunicorn's exit status for a worker that failed to boot: the master then halts.
WORKER_BOOT_ERROR: Final = 3
#: Seconds WebSockets get to finish their close handshake after the 1001, before the
#: worker drops whatever is left.
_LAST_WORDS: Final = 5.0


class ASGIWorker(LinkedWorker):
    """A pre-forked asyncio worker that gets its connections from the master."""

    @classmethod
    def check_own_config(cls, cfg: Any, log: Any) -> None:
        """``--threads`` has no use here."""
        if int(cfg.threads) > 1:
            # As Gunicorn's own asgi worker: a warning, not a refusal.
            log.warning("gunicorn_fdpass.ASGIWorker does not use --threads (%s): one event "
                        "loop serves up to --worker-connections connections at once",
                        cfg.threads)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Runs in the master, right before Gunicorn forks this worker.
        super().__init__(*args, **kwargs)
        self.connections: set[AsgiConnection] = set()
        self.state: dict[str, Any] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._ssl_context: ssl.SSLContext | None = None
        self._master_gone = False
        self._reading_inbox = False
        self._stopped: asyncio.Future[None] | None = None
        self._empty: asyncio.Future[None] | None = None
        self._deadline: float | None = None  # when WebSockets get 1001
        self._next_notify = 0.0
        #: Done messages of connections that ended in this turn of the loop, sent together at
        #: its end (see ended()).
        self._done: list[int] = []

    def announced_capacity(self) -> int:
        return max(1, int(self.cfg.worker_connections))

    def prepare_process(self) -> None:
        """In the child: the event loop, before Gunicorn installs the signal handlers on it."""
        self.loop = new_event_loop(str(getattr(self.cfg, "asgi_loop", "auto")), self.log)
        asyncio.set_event_loop(self.loop)

    def init_signals(self) -> None:
        """Gunicorn's worker signals, handled on the event loop."""
        for sig in self.SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        loop = self.loop
        assert loop is not None
        loop.add_signal_handler(signal.SIGTERM, self._stop)
        loop.add_signal_handler(signal.SIGQUIT, self._quit)
        loop.add_signal_handler(signal.SIGINT, self._quit)
        loop.add_signal_handler(signal.SIGABRT, self._abort)
        loop.add_signal_handler(signal.SIGUSR1, self.log.reopen_files)
        loop.add_signal_handler(signal.SIGWINCH, lambda: None)

    def _quit(self) -> None:
        self.alive = False
        self.cfg.worker_int(self)
        raise SystemExit(0)

    def _abort(self) -> None:
        self.alive = False
        self.cfg.worker_abort(self)
        raise SystemExit(1)

    # -- main loop -----------------------------------------------------------------------

    def run(self) -> None:
        loop = self.loop
        assert loop is not None
        try:
            loop.run_until_complete(self._main())
        finally:
            self._cleanup(loop)

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        own = fdpass_settings.load()  # validated by the master at startup
        self.http = http_config(self.cfg, own, multithread=False)
        self.config = asgi_config(self.cfg, self.http, own.asgi_idle)
        if self.cfg.is_ssl:
            self._ssl_context = gunicorn_sock.ssl_context(self.cfg)
        self._stopped = loop.create_future()
        self._tick()
        lifespan = Lifespan(self.wsgi, self.log)
        try:
            if await lifespan.startup(str(getattr(self.cfg, "asgi_lifespan", "auto"))):
                self.state = lifespan.state
        except LifespanFailed as exc:
            self.log.error("ASGI lifespan startup failed, worker exiting: %s", exc)
            raise SystemExit(WORKER_BOOT_ERROR) from None
        try:
            self.channel.send(messages.Hello(self.capacity, os.getpid()))
            loop.add_reader(self.channel.fileno(), self._read_channel)
            self._watch_inbox()
            if self.alive:
                await self._stopped
            await self._drain()
        except PeerGone:
            self._master_hung_up()
        finally:
            await lifespan.shutdown()

    def _stop(self) -> None:
        """Stop gracefully (SIGTERM, max_requests, the master gone or changed)."""
        if self.alive:
            self.alive = False
            self._set_deadline(time.monotonic() + float(self.cfg.graceful_timeout))
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)

    def _set_deadline(self, when: float) -> None:
        if self._deadline is None or when < self._deadline:
            self._deadline = when

    async def _drain(self) -> None:
        """Hand idle connections back, let the others finish, then go."""
        loop = asyncio.get_running_loop()
        self._unwatch_inbox()
        if not self._master_gone:
            try:
                # Handoffs still unread in the inbox were never Taken: the master takes them
                # back and gives them to another worker.
                self.channel.send(messages.Draining())
            except PeerGone:
                self._master_gone = True
        for conn in list(self.connections):
            conn.wake_idle()
        while self.connections:
            self._empty = loop.create_future()
            await self._empty
        self._empty = None
        self._send_done()
        if self._master_gone:
            self._master_hung_up()

    def _tick(self) -> None:
        """The loop's own timer: heartbeat, time limits, the graceful stop's deadline."""
        loop = self.loop
        assert loop is not None
        now = time.monotonic()
        if now >= self._next_notify:
            # A file-time update (a syscall): once per interval is enough for --timeout.
            self.notify()
            self._next_notify = now + min(1.0, (self.timeout or 2) / 2)
            if self.ppid != os.getppid():
                self.log.info("Parent changed, shutting down: %s", self)
                self._master_gone = True
                self._stop()
        for conn in list(self.connections):
            conn.tick(now)
        deadline = self._deadline
        if deadline is not None and now >= deadline:
            for conn in list(self.connections):
                if conn.websocket is not None:
                    conn.websocket.shutdown()
            if not self.alive and now >= deadline + _LAST_WORDS:
                for conn in list(self.connections):
                    conn.abort()
        loop.call_later(TICK, self._tick)

    def _send_done(self) -> None:
        """One ``Done`` for the connections that ended in this turn of the loop."""
        done, self._done = self._done, []
        for start in range(0, len(done), messages.MAX_DONE):
            if self._master_gone:
                return
            ids = done[start:start + messages.MAX_DONE]
            try:
                self.channel.send(messages.Done(ids[0], tuple(ids[1:])))
            except PeerGone:
                self._master_gone = True

    def _cleanup(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            if tasks and not loop.is_closed():
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.close()
        except Exception as exc:  # an exit path: nothing may stop it
            self.log.debug("Cleanup of the event loop: %s", exc)
        self.channel.close()
        self.inbox.close()

    # -- the master link -------------------------------------------------------------------

    def _read_channel(self) -> None:
        """What the master says besides handoffs: ``Closing``; or that it is gone."""
        try:
            while (received := self.channel.recv()) is not None:
                if isinstance(received.message, messages.Closing):
                    self._server_closing()
                else:
                    self.log.error("unexpected message from the master: %r", received.message)
                    if received.fd is not None:
                        os.close(received.fd)
        except PeerGone:
            assert self.loop is not None
            self.loop.remove_reader(self.channel.fileno())
            self._master_gone = True
            self._set_deadline(time.monotonic())
            self._stop()

    def _server_closing(self) -> None:
        """The master is stopping the server: no more keep-alive; WebSockets get 1001 when
        its graceful timeout is over."""
        self._closing = True
        self._set_deadline(time.monotonic() + float(self.cfg.graceful_timeout))
        for conn in list(self.connections):
            conn.wake_idle()

    def _watch_inbox(self) -> None:
        if not self._reading_inbox and self.alive:
            assert self.loop is not None
            self._reading_inbox = True
            self.loop.add_reader(self.inbox.fileno(), self._read_inbox)
            self._read_inbox()  # some may have arrived while we were not watching

    def _unwatch_inbox(self) -> None:
        if self._reading_inbox:
            assert self.loop is not None
            self._reading_inbox = False
            self.loop.remove_reader(self.inbox.fileno())

    def _read_inbox(self) -> None:
        """Take handoffs while there is room; unread ones stay where the master can take
        them back."""
        try:
            while self.alive and len(self.connections) < self.capacity:
                received = self.inbox.recv()
                if received is None:
                    return
                message = received.message
                if not isinstance(message, messages.Handoff):
                    self.log.error("unexpected message from the master: %r", message)
                    if received.fd is not None:
                        os.close(received.fd)
                    continue
                if received.fd is None:
                    self.channel.send(messages.Refused(message.conn_id))
                    continue
                # No acknowledgement: the master keeps its copy until Done or Park, and
                # takes back only what is still unread in the inbox.
                self._start(message, received.fd)
        except PeerGone:
            self._master_gone = True
            self._set_deadline(time.monotonic())
            self._stop()
        if len(self.connections) >= self.capacity or not self.alive:
            self._unwatch_inbox()

    def _start(self, handoff: messages.Handoff, fd: int) -> None:
        assert self.loop is not None
        sock = socket_from_fd(fd, handoff.family)
        plain = self._ssl_context is None
        # The master hands over a connection once its request head has arrived: a plain one
        # is read now, and answered on the socket itself until it has to wait (see
        # asgi/direct.py).
        prefix = handoff.prefix + ready_bytes(sock) if plain else handoff.prefix
        conn = AsgiConnection(handoff.conn_id, handoff.family, prefix, self.wsgi,
                              self.config, self, self.log, self.loop, sock)
        if plain:
            conn.connection_made(DirectTransport(sock, conn, self.loop, conn.move_soon))
            serving = conn.serve()
        else:
            serving = self._serve_tls(conn, sock)
        self.connections.add(conn)
        task = self.loop.create_task(serving)
        self._tasks.add(task)  # the loop keeps only weak references to its tasks
        task.add_done_callback(self._tasks.discard)

    async def _serve_tls(self, conn: AsgiConnection, sock: socket.socket) -> None:
        loop = self.loop
        assert loop is not None
        try:
            # The loop makes the socket non-blocking itself.
            await loop.connect_accepted_socket(lambda: conn, sock, ssl=self._ssl_context)
        except Exception as exc:  # a failed TLS handshake, a socket already reset
            self.log.debug("Cannot start serving a connection: %r", exc)
            if not conn.gone:
                sock.close()
                self.ended(conn)
            return
        await conn.serve()

    # -- WorkerSide, as the connections see it ----------------------------------------------

    def request_started(self) -> After:
        """Count a request; say what happens to its connection after it."""
        self.nr += 1
        if self.nr >= self.max_requests and self.alive:
            self.log.info("Autorestarting worker after current request.")
            self._stop()
        if self._closing:
            return After.CLOSE
        # A draining worker: the connection stays open and goes back to the master.
        return After.CONTINUE if self.alive else After.HAND_BACK

    def stopping(self) -> bool:
        return self._closing or not self.alive

    def hand_back(self, conn: AsgiConnection, leftover: bytes) -> bool:
        if self._master_gone:
            return False
        try:
            self.channel.send(messages.Park(conn.conn_id, leftover, conn.family))
        except PeerGone:
            self._master_gone = True
            return False
        return True

    def ended(self, conn: AsgiConnection) -> None:
        if conn not in self.connections:
            return
        self.connections.discard(conn)
        if not conn.handed_back and not self._master_gone:
            # Sent at the end of this turn of the loop, with the Done of every other
            # connection that ends in it: the first message wakes the master, the others find
            # it awake (a wake-up costs the sender more than the message). The master learns
            # of the free slot a few microseconds later, no later than our next handoff read.
            self._done.append(conn.conn_id)
            if len(self._done) == 1:
                assert self.loop is not None
                self.loop.call_soon(self._send_done)
        if self.alive:
            self._watch_inbox()
        elif not self.connections and self._empty is not None and not self._empty.done():
            self._empty.set_result(None)

