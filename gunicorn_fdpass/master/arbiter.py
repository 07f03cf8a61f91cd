"""Gunicorn glue on the master side: installs the dispatcher into Gunicorn's arbiter.

Gunicorn's arbiter is a single-threaded loop that waits for signals on a queue
(``Arbiter.wait_for_signals``) and otherwise sleeps in short steps (between spawns, during a
reload or a graceful stop). The dispatcher takes over exactly those waits: the arbiter's wait
becomes "run the dispatcher until a signal is queued or the timeout passes", and its sleeps
keep the dispatcher running. Signals still only enqueue (Gunicorn's handlers); a
``signal.set_wakeup_fd`` self-pipe makes the dispatcher's ``select`` return at once.

No thread is started, so forking workers stays safe (no lock held by another thread, no
Python 3.12 warning about forking a multi-threaded process).
"""

from __future__ import annotations

import os
import queue
import signal
import time
from collections.abc import Callable
from typing import Any

from gunicorn import sock as gunicorn_sock

from .. import settings as fdpass_settings
from ..errors import ConfigurationError
from ..gunicorn_settings import dispatch_settings, raise_fd_limit
from .dispatcher import Dispatcher
from .links import WorkerEnds
from .report import Reporter

#: Seconds between two reports of the live numbers (statsd, debug log, stats file).
REPORT_INTERVAL = 1.0

_ACTIVE: Dispatcher | None = None
_FORK_HOOKS_REGISTERED = False


def active_dispatcher() -> Dispatcher | None:
    """The dispatcher of this process, if this process is a master running one."""
    if _ACTIVE is not None and _ACTIVE.owner_pid == os.getpid():
        return _ACTIVE
    return None


def install(arbiter: Any) -> Dispatcher:
    """Install the dispatcher into ``arbiter`` (idempotent). Called from ``when_ready``."""
    global _ACTIVE
    existing = active_dispatcher()
    if existing is not None:
        return existing
    own = fdpass_settings.load()
    before, after = raise_fd_limit()
    if after != before:
        arbiter.log.info("fdpass: raised the open-file limit (RLIMIT_NOFILE) from %d to %d: "
                         "the master holds one file descriptor per client connection",
                         before, after)
    dispatcher = Dispatcher(arbiter.log, dispatch_settings(arbiter.cfg, own))
    arbiter.log.info("fdpass: the master holds at most %d connections (%s)",
                     dispatcher.settings.max_connections,
                     "FDPASS_MAX_CONNECTIONS" if own.max_connections else
                     "from the open-file limit; set FDPASS_MAX_CONNECTIONS to change it")
    _ACTIVE = dispatcher
    _register_fork_hooks()
    _MasterLoop(arbiter, dispatcher, own).attach()
    arbiter.log.info("fdpass dispatcher running in the master (pid %s)", os.getpid())
    return dispatcher


def open_worker_channel() -> WorkerEnds:
    """Called in the master while Gunicorn creates a worker object, just before the fork."""
    dispatcher = active_dispatcher()
    if dispatcher is None:
        raise ConfigurationError(
            "gunicorn_fdpass.Worker needs its master-side dispatcher, which is installed by "
            "Gunicorn's when_ready hook; start it with --worker-class gunicorn_fdpass.Worker"
        )
    return dispatcher.open_channel()


def _register_fork_hooks() -> None:
    global _FORK_HOOKS_REGISTERED
    if not _FORK_HOOKS_REGISTERED:
        os.register_at_fork(after_in_parent=_after_fork_in_parent,
                            after_in_child=_after_fork_in_child)
        _FORK_HOOKS_REGISTERED = True


def _after_fork_in_parent() -> None:
    dispatcher = active_dispatcher()
    if dispatcher is not None:
        dispatcher.after_fork_in_parent()


#: In a forked worker: its own channel and inbox ends, taken from the master's pending set at
#: fork time.
_INHERITED_CHANNEL: WorkerEnds | None = None


def _after_fork_in_child() -> None:
    global _ACTIVE, _INHERITED_CHANNEL
    dispatcher = _ACTIVE
    if dispatcher is None or dispatcher.owner_pid == -1:
        return
    # A signal arriving before the worker installs its own wakeup fd must not write into an
    # fd number that is about to be closed (and maybe reused).
    try:
        signal.set_wakeup_fd(-1)
    except ValueError:
        pass  # forked from another thread: the wakeup fd is only ever set from the main one
    _INHERITED_CHANNEL = dispatcher.after_fork_in_child()
    _ACTIVE = None


def take_inherited_channel(expected: WorkerEnds) -> None:
    """In a worker: confirm that the ends kept at fork time are this worker's own."""
    global _INHERITED_CHANNEL
    kept, _INHERITED_CHANNEL = _INHERITED_CHANNEL, None
    if kept is not expected:
        raise RuntimeError("worker channel mismatch after fork")


class _MasterLoop:
    """Binds a dispatcher to one arbiter instance."""

    def __init__(self, arbiter: Any, dispatcher: Dispatcher,
                 own: fdpass_settings.FdpassSettings) -> None:
        self.arbiter = arbiter
        self.dispatcher = dispatcher
        self.own = own
        self._cfg = arbiter.cfg
        self._next_report = 0.0
        self._reporter = Reporter(arbiter.log)
        #: Gunicorn's LISTENERS list as last given to the dispatcher, and its length then.
        self._listeners: list[Any] | None = None
        self._listener_count = 0

    def attach(self) -> None:
        arbiter = self.arbiter
        signal.set_wakeup_fd(self.dispatcher.wakeup_fd, warn_on_full_buffer=False)
        # Instance attributes shadow the class's methods for this arbiter only.
        arbiter.wait_for_signals = self.wait_for_signals
        arbiter.wakeup = _chain(arbiter.wakeup, self.dispatcher.wake)
        arbiter.stop = self._stopping(arbiter.stop)
        import gunicorn.arbiter as arbiter_module

        arbiter_module.time = _ArbiterClock(self.run_for)
        self._refresh()

    def _refresh(self) -> None:
        """Pick up listeners and settings that a reload or stop may have replaced."""
        if self.arbiter.cfg is not self._cfg:
            self._cfg = self.arbiter.cfg
            try:
                self.own = fdpass_settings.load()
            except ConfigurationError as exc:
                # A bad value in a reloaded config must not take the master down.
                self.arbiter.log.error("%s; keeping the previous fdpass settings", exc)
            self.dispatcher.settings = dispatch_settings(self._cfg, self.own)
        listeners: list[Any] = self.arbiter.LISTENERS
        # Gunicorn assigns a new list whenever its listeners change (start, reload, stop),
        # so the identity check spares a comparison on every round of the loop.
        if listeners is not self._listeners or len(listeners) != self._listener_count:
            self._listeners, self._listener_count = listeners, len(listeners)
            self.dispatcher.set_listeners(listeners)
        now = time.monotonic()
        if now >= self._next_report:
            self._next_report = now + REPORT_INTERVAL
            self._report()

    def _report(self) -> None:
        """Publish the live numbers: statsd, one debug log line, the stats file."""
        dispatcher = self.dispatcher
        self._reporter.log = self.arbiter.log  # a reload makes a new logger (statsd or not)
        self._reporter.report(dispatcher.counts(), dispatcher.busy_by_worker(),
                              dispatcher.reserves_by_worker(), self.own.stats_file)

    def _stopping(self, stop: Callable[..., None]) -> Callable[..., None]:
        """Wrap ``Arbiter.stop``: a graceful stop first serves what the master holds."""
        def stop_after_draining(graceful: bool = True) -> None:
            if graceful and active_dispatcher() is self.dispatcher:
                self._drain(time.monotonic() + float(self.arbiter.cfg.graceful_timeout))
            stop(graceful)
        return stop_after_draining

    def _drain(self, deadline: float) -> None:
        """Keep dispatching until every queued and in-flight request is answered.

        The listeners close first, so that new clients are refused at once instead of
        waiting in a backlog nobody accepts from (after USR2 the new master still
        accepts on its own copies). Gunicorn then signals the now idle workers. A SIGINT or
        SIGQUIT meanwhile cuts the wait short, as it does Gunicorn's own graceful wait.
        """
        arbiter = self.arbiter
        self.dispatcher.begin_shutdown()
        # The same rule as Gunicorn's stop(): a unix socket path stays while another
        # master (USR2) or systemd still relies on it.
        unlink = (arbiter.reexec_pid == arbiter.master_pid == 0 and not arbiter.systemd
                  and not arbiter.cfg.reuse_port)
        gunicorn_sock.close_sockets(arbiter.LISTENERS, unlink)
        arbiter.LISTENERS = []
        self.dispatcher.set_listeners([])
        arbiter.log.info("fdpass: listeners closed; finishing queued and in-flight requests")
        quick = (signal.SIGINT, signal.SIGQUIT)
        while not self.dispatcher.drained() and time.monotonic() < deadline:
            pending = _drain_queue(arbiter.SIG_QUEUE)
            for sig in pending:
                arbiter.SIG_QUEUE.put_nowait(sig)  # Gunicorn's own stop loop reads them
            if any(sig in quick for sig in pending):
                break
            self._poll(min(0.1, deadline - time.monotonic()), one_round=True)
        self.dispatcher.close()  # what is left is idle: end it before the workers go

    def _poll(self, timeout: float, *, one_round: bool = False) -> None:
        """Dispatch for up to ``timeout`` seconds, until a signal arrives (or one round
        only). An unexpected error in it (a bug) is logged and the master goes on: raised
        into Gunicorn's loop it would stop the master, and with it every worker and every
        connection."""
        try:
            if one_round:
                self.dispatcher.poll(timeout)
            else:
                self.dispatcher.run(timeout)
        except Exception:
            self.arbiter.log.exception("fdpass dispatcher error (a bug: please report it)")

    def wait_for_signals(self, timeout: float = 1.0) -> list[int]:
        """Replacement for ``Arbiter.wait_for_signals`` that keeps dispatching meanwhile."""
        deadline = time.monotonic() + timeout
        wakeup_request: int = self.arbiter.WAKEUP_REQUEST
        while True:
            self._refresh()
            queued = _drain_queue(self.arbiter.SIG_QUEUE)
            remaining = deadline - time.monotonic()
            if queued or remaining <= 0:
                return [sig for sig in queued if sig != wakeup_request]
            self._poll(min(remaining, REPORT_INTERVAL))

    def run_for(self, seconds: float) -> None:
        """Keep dispatching for ``seconds`` (stands in for the arbiter's ``time.sleep``)."""
        if active_dispatcher() is not self.dispatcher:
            time.sleep(seconds)  # e.g. in a forked child still running arbiter code
            return
        deadline = time.monotonic() + seconds
        while True:
            self._refresh()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._poll(remaining)


def _drain_queue(sig_queue: queue.SimpleQueue[int]) -> list[int]:
    # Only this (main) thread takes from the queue, so a non-empty one cannot empty under
    # us; asking first spares the raised queue.Empty on almost every round of the loop.
    items: list[int] = []
    while not sig_queue.empty():
        items.append(sig_queue.get_nowait())
    return items


class _ArbiterClock:
    """Stands in for the ``time`` module inside ``gunicorn.arbiter`` only.

    Every ``time.sleep`` of the arbiter (between worker spawns, while waiting for old workers
    during a reload or a graceful stop) becomes a dispatcher run of the same length, so the
    master never stops handing out connections.
    """

    def __init__(self, run_for: Callable[[float], None]) -> None:
        self.sleep = run_for

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def _chain(first: Callable[[], None], then: Callable[[], None]) -> Callable[[], None]:
    def both() -> None:
        first()
        then()
    return both



def hook_when_ready(cfg: Any) -> None:
    """Make Gunicorn's ``when_ready`` install the dispatcher, then run the user's own hook.

    ``when_ready`` runs in the master after the listeners exist and before the first worker
    is forked, which is exactly when the dispatcher must start. A user's hook keeps working:
    it is called right after ours.
    """
    setting = cfg.settings["when_ready"]
    user_hook = setting.get()
    if getattr(user_hook, "_fdpass_installs", False):
        return

    def when_ready(server: Any) -> None:
        install(server)
        user_hook(server)

    when_ready._fdpass_installs = True  # type: ignore[attr-defined]
    setting.value = when_ready
