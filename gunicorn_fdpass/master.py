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

from .channel import Channel
from .dispatcher import Dispatcher, DispatchSettings
from .errors import ConfigurationError

_ACTIVE: Dispatcher | None = None
_FORK_HOOKS_REGISTERED = False


def active_dispatcher() -> Dispatcher | None:
    """The dispatcher of this process, if this process is a master running one."""
    if _ACTIVE is not None and _ACTIVE.owner_pid == os.getpid():
        return _ACTIVE
    return None


def settings_from(cfg: Any) -> DispatchSettings:
    """Map Gunicorn settings onto the dispatcher's."""
    return DispatchSettings(keepalive=float(cfg.keepalive), max_queue=max(1, int(cfg.backlog)))


def install(arbiter: Any) -> Dispatcher:
    """Install the dispatcher into ``arbiter`` (idempotent). Called from ``when_ready``."""
    global _ACTIVE
    existing = active_dispatcher()
    if existing is not None:
        return existing
    dispatcher = Dispatcher(arbiter.log, settings_from(arbiter.cfg))
    _ACTIVE = dispatcher
    _register_fork_hooks()
    _MasterLoop(arbiter, dispatcher).attach()
    arbiter.log.info("fdpass dispatcher running in the master (pid %s)", os.getpid())
    return dispatcher


def open_worker_channel() -> Channel:
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


#: In a forked worker: its own channel end, taken from the master's pending set at fork time.
_INHERITED_CHANNEL: Channel | None = None


def _after_fork_in_child() -> None:
    global _ACTIVE, _INHERITED_CHANNEL
    dispatcher = _ACTIVE
    if dispatcher is None or dispatcher.owner_pid == -1:
        return
    # A signal arriving before the worker installs its own wakeup fd must not write into an
    # fd number that is about to be closed (and maybe reused).
    signal.set_wakeup_fd(-1)
    _INHERITED_CHANNEL = dispatcher.after_fork_in_child()
    _ACTIVE = None


def take_inherited_channel(expected: Channel) -> None:
    """In a worker: confirm that the channel kept at fork time is this worker's own."""
    global _INHERITED_CHANNEL
    kept, _INHERITED_CHANNEL = _INHERITED_CHANNEL, None
    if kept is not expected:
        raise RuntimeError("worker channel mismatch after fork")


class _MasterLoop:
    """Binds a dispatcher to one arbiter instance."""

    def __init__(self, arbiter: Any, dispatcher: Dispatcher) -> None:
        self.arbiter = arbiter
        self.dispatcher = dispatcher
        self._cfg = arbiter.cfg

    def attach(self) -> None:
        arbiter = self.arbiter
        signal.set_wakeup_fd(self.dispatcher.wakeup_fd, warn_on_full_buffer=False)
        # Instance attributes shadow the class's methods for this arbiter only.
        arbiter.wait_for_signals = self.wait_for_signals
        arbiter.wakeup = _chain(arbiter.wakeup, self.dispatcher.wake)
        import gunicorn.arbiter as arbiter_module

        arbiter_module.time = _ArbiterClock(self.run_for)
        self._refresh()

    def _refresh(self, *_: Any) -> None:
        """Pick up listeners and settings that a reload or stop may have replaced."""
        if self.arbiter.cfg is not self._cfg:
            self._cfg = self.arbiter.cfg
            self.dispatcher.settings = settings_from(self._cfg)
        self.dispatcher.set_listeners(self.arbiter.LISTENERS)

    def wait_for_signals(self, timeout: float = 1.0) -> list[int]:
        """Replacement for ``Arbiter.wait_for_signals`` that keeps dispatching meanwhile."""
        deadline = time.monotonic() + timeout
        sig_queue: queue.SimpleQueue[int] = self.arbiter.SIG_QUEUE
        wakeup_request: int = self.arbiter.WAKEUP_REQUEST
        while True:
            self._refresh()
            woken = False
            signals: list[int] = []
            while True:
                try:
                    sig = sig_queue.get_nowait()
                except queue.Empty:
                    break
                woken = True
                if sig != wakeup_request:
                    signals.append(sig)
            remaining = deadline - time.monotonic()
            if woken or remaining <= 0:
                return signals
            self.dispatcher.poll(remaining)

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
            self.dispatcher.poll(remaining)


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
