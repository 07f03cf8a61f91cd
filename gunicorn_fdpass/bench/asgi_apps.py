"""The bench's own ASGI app: the routes of :mod:`.apps`, for ASGI worker classes.

Routes:

- ``/``: a 14-byte plain-text answer;
- ``/slow?ms=N``: the same answer after ``await asyncio.sleep`` for N milliseconds (at most
  60 000): a request waiting on a database or another service, which leaves the event loop
  free for the worker's other connections;
- ``/cpu?ms=N``: the same answer after keeping the CPU busy for N milliseconds of CPU time:
  a view that computes, which holds the worker's event loop for that long (what the balance
  scenario loads the workers with);
- ``/pid``: the serving process's id as the body.

Every response carries ``X-Worker-Pid``. Lifespan events are acknowledged, so that every
worker class starts it the same way; the app keeps no state.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .apps import BAD_MS, BODY, burn, parse_seconds

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """ASGI 3 entry point: ``gunicorn_fdpass.bench.asgi_apps:app``."""
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] != "http":
        return  # websocket: not a route of the bench; returning closes it with 1000/403
    path = scope["path"]
    if path == "/":
        await _answer(send, 200, BODY)
    elif path in ("/slow", "/cpu"):
        seconds = parse_seconds(scope["query_string"].decode("latin-1"))
        if seconds is None:
            await _answer(send, 400, BAD_MS)
            return
        if path == "/slow":
            await asyncio.sleep(seconds)
        else:
            burn(seconds)
        await _answer(send, 200, BODY)
    elif path == "/pid":
        await _answer(send, 200, str(os.getpid()).encode("ascii"))
    else:
        await _answer(send, 404, b"not found\n")


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _answer(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"text/plain"),
        (b"content-length", str(len(body)).encode("ascii")),
        # Read per response, not at import: the app may be imported before the fork.
        (b"x-worker-pid", str(os.getpid()).encode("ascii")),
    ]})
    await send({"type": "http.response.body", "body": body})

