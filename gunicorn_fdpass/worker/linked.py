"""What both worker classes share: a Gunicorn worker fed by the master over its link.

The glue around the fork and the link, in one place: validating the settings (when Gunicorn
loads the class, before it binds, and again in ``check_config``) and hooking the master in;
the channel, inbox and waiting board made in the master just before the fork; dropping the
master's listeners in the child; what a worker says when the master hangs up; and the hooks
both connection loops call the same way.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import timedelta
from typing import Any

from gunicorn.workers import base

from ..errors import FdpassError
from ..gunicorn_settings import validate, validate_on_load
from ..http.response import ResponseInfo
from ..link import messages
from ..link.channel import Channel
from ..master import arbiter
from .api import RequestInfo

__all__ = ["LinkedWorker", "closing_unread"]


class LinkedWorker(base.Worker):  # type: ignore[misc]  # gunicorn ships no type hints
    """A pre-forked worker that gets its connections from the master, never from accept()."""

    sockets: list[socket.socket]  # Gunicorn's listeners; closed in the worker at once

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        """Called by Gunicorn in the master at startup: validate, then hook the master in."""
        validate(cfg)
        cls.check_own_config(cfg, log)
        arbiter.hook_when_ready(cfg)

    @classmethod
    def check_own_config(cls, cfg: Any, log: Any) -> None:
        """What a worker class checks beyond the shared settings (nothing by default)."""

    @classmethod
    def setup(cls) -> None:
        """Called by Gunicorn as it loads this class, before it binds: refuse bad settings."""
        validate_on_load()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Runs in the master, right before Gunicorn forks this worker.
        super().__init__(*args, **kwargs)
        ends = arbiter.open_worker_channel()
        self._ends = ends
        self.channel: Channel = ends.channel  # to and from the master
        self.inbox: Channel = ends.inbox  # handoffs from the master
        self.board = ends.board  # how much work waits in the master
        self.capacity = self.announced_capacity()
        self._closing = False  # the master said the server is stopping
        # Gunicorn's hooks, and which are its defaults: read once (a reload starts new
        # workers), so that a request does not look them up in cfg.
        self._pre_request: Any = None
        self._pre_request_default = False
        self._post_request: Any = None
        self._post_request_set = True
        self._learn_hooks()

    def announced_capacity(self) -> int:
        """The connections this worker serves at once, announced to the master."""
        raise NotImplementedError

    def init_process(self) -> None:
        """In the child: drop what belongs to the master, then let Gunicorn start ``run``."""
        arbiter.take_inherited_channel(self._ends)
        for listener in self.sockets:
            listener.close()  # only the master accepts
        self.sockets = []
        self.channel.set_blocking(True)
        self.prepare_process()
        super().init_process()

    def prepare_process(self) -> None:
        """In the child, before Gunicorn's own start-up of the worker (nothing by default)."""

    def _master_hung_up(self) -> None:
        if self._closing or closing_unread(self.channel):
            # A graceful stop: the master said Closing, finished what it held, and closed
            # the channels. Nothing went wrong; Gunicorn's own workers say as much at info.
            self.log.info("Server stopping: worker finished its requests (pid: %s)",
                          os.getpid())
        else:
            self.log.warning("master is gone, worker exiting: %s", self)

    # -- hooks both connection loops call ------------------------------------------------

    def others_waiting(self) -> bool:
        """Work that arrived earlier waits (in the master's queue or as a reserve)."""
        return self.board.waiting() > 0

    def pre_request(self, req: RequestInfo) -> None:
        if self.pre_request_wanted():
            self._pre_request(self, req)

    def pre_request_wanted(self) -> bool:
        """False for Gunicorn's default hook, which only writes a debug line, while debug
        logging is off."""
        return not self._pre_request_default or self._debug_logged()

    def access_wanted(self) -> bool:
        """The access log is on (Gunicorn's logger says so; a logger without the flag is
        asked every time), or a ``post_request`` hook is set."""
        return bool(getattr(self.log, "access_log_enabled", True)) or self._post_request_set

    def post_request(self, req: RequestInfo, environ: dict[str, Any], resp: ResponseInfo) -> None:
        self._post_request(self, req, environ, resp)

    def access(self, resp: ResponseInfo, req: RequestInfo, environ: dict[str, Any],
               request_time: timedelta) -> None:
        self.log.access(resp, req, environ, request_time)

    def _learn_hooks(self) -> None:
        settings = getattr(self.cfg, "settings", {})
        self._pre_request = self.cfg.pre_request
        self._post_request = self.cfg.post_request
        hook = settings.get("pre_request")
        self._pre_request_default = hook is not None and self._pre_request is hook.default
        hook = settings.get("post_request")
        self._post_request_set = hook is None or self._post_request is not hook.default

    def _debug_logged(self) -> bool:
        error_log = getattr(self.log, "error_log", None)
        return not isinstance(error_log, logging.Logger) or error_log.isEnabledFor(
            logging.DEBUG)


def closing_unread(channel: Channel) -> bool:
    """Whether the master's ``Closing`` waits unread in ``channel`` (read up to its hang-up).

    A worker that stopped on its own (Gunicorn's SIGTERM to every worker of a stopping
    server, ``max_requests``) may find the channel hung up before it read the ``Closing``
    that came first: that is a graceful stop, not a dead master.
    """
    try:
        while (received := channel.recv()) is not None:
            if received.fd is not None:
                os.close(received.fd)
            if isinstance(received.message, messages.Closing):
                return True
    except FdpassError:  # the hang-up itself, or a channel already closed
        pass
    return False
