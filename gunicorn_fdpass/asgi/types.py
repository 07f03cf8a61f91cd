"""The ASGI 3.0 callables as this package types them (the spec's dicts stay plain dicts)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["ASGIApp", "ClientDisconnected", "Message", "Receive", "Scope", "Send"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ClientDisconnected(OSError):
    """``send()`` on a connection the client closed (ASGI spec 2.4: an ``OSError`` subclass,
    so a framework stops a streaming response instead of producing into the void)."""
