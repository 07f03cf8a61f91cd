"""The event loop of an ASGI worker: uvloop when installed, asyncio otherwise (Gunicorn's
``--asgi-loop``: ``auto``, ``uvloop`` or ``asyncio``)."""

from __future__ import annotations

import asyncio
import importlib
from typing import Any

__all__ = ["new_event_loop"]


def new_event_loop(mode: str, log: Any) -> asyncio.AbstractEventLoop:
    """A new loop of the kind ``mode`` asks for; ``uvloop`` without uvloop installed falls
    back to asyncio with a warning, as Gunicorn's own asgi worker does."""
    if mode in ("auto", "uvloop"):
        try:
            uvloop = importlib.import_module("uvloop")
        except ImportError:
            if mode == "uvloop":
                log.warning("uvloop is not installed: using the asyncio event loop")
        else:
            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
            log.debug("Using the uvloop event loop")
            return loop
    log.debug("Using the asyncio event loop")
    return asyncio.new_event_loop()
