"""The ASGI worker's settings: the HTTP layer's plus what only ASGI needs. Pure data, built
once per worker from Gunicorn's configuration (:func:`asgi_config`)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, Final

from ..http.config import HttpConfig
from ..http.keep_alive import Policy

__all__ = ["DEFAULT_WS_MAX_MESSAGE", "AsgiConfig", "asgi_config"]

#: Gunicorn's default ``websocket_max_message_size``.
DEFAULT_WS_MAX_MESSAGE: Final = 16 * 1024 * 1024


@dataclass(frozen=True)
class AsgiConfig:
    """What a connection of the ASGI worker needs to know."""

    http: HttpConfig
    #: The application's mount point (``--root-path``, else ``SCRIPT_NAME`` from the
    #: environment, as the WSGI worker reads it).
    root_path: str = ""
    #: Seconds an idle keep-alive connection waits in the worker before going back to the
    #: master (``FDPASS_ASGI_IDLE``); 0: at once.
    idle: float = 0.5
    #: Seconds an idle connection that cannot go back stays open (``--keep-alive``; TLS
    #: connections never get there today: keep-alive is off for them, as for WSGI).
    keepalive: float = 2.0
    #: Largest WebSocket message (``--websocket-max-message-size``); 0: no limit.
    ws_max_message: int = DEFAULT_WS_MAX_MESSAGE

    @property
    def policy(self) -> Policy:
        """The keep-alive decision's settings. No burst limit: an asyncio worker serves its
        connections concurrently, so a busy one delays no other connection's requests."""
        http = self.http
        return Policy(keepalive=http.keepalive, parkable=http.parkable, burst=sys.maxsize,
                      in_order=http.in_order)


def asgi_config(cfg: Any, http: HttpConfig, idle: float) -> AsgiConfig:
    """The settings of an ASGI worker running under Gunicorn's ``cfg``."""
    root_path = str(getattr(cfg, "root_path", "") or "") or os.environ.get("SCRIPT_NAME", "")
    max_message = getattr(cfg, "websocket_max_message_size", DEFAULT_WS_MAX_MESSAGE)
    return AsgiConfig(
        http=http,
        root_path=root_path,
        idle=idle,
        keepalive=float(cfg.keepalive),
        ws_max_message=int(DEFAULT_WS_MAX_MESSAGE if max_message is None else max_message),
    )
