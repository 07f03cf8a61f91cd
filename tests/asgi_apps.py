"""A plain ASGI test application for the integration tests (no framework: the point is the
server's ASGI implementation). Every response carries ``X-Worker-Pid``.

Routes
------
``/``, ``/pid``        hello / the worker's pid
``/sleep?s=F``         awaits F seconds (the loop stays free); ``&marker=P`` appends a line
                       to file P when it starts
``/block?s=F``         blocks the event loop F seconds (time.sleep): for ``--timeout``
``/forever?marker=P``  streams a chunk every 10 ms until the client goes; on its end it
                       appends "stopped <reason>" to file P
``/upload``            reads the body: JSON length and sha256
``/state``             the lifespan state this request got
``/scope``             the scope's address, path and scheme fields as JSON
``/ws``                WebSocket echo; "pid" answers the worker's pid

Lifespan: startup stores ``{"booted": pid}``; with ``FAIL_STARTUP=1`` in the environment it
answers ``lifespan.startup.failed``; with ``LIFESPAN_MARKER=P`` shutdown appends
"shutdown <pid>" to file P.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from typing import Any
from urllib.parse import parse_qs

Scope = dict[str, Any]


def _query(scope: Scope) -> dict[str, str]:
    parsed = parse_qs(scope["query_string"].decode("latin-1"), keep_blank_values=True)
    return {k: v[-1] for k, v in parsed.items()}


async def _answer(send: Any, body: bytes, status: int = 200,
                  content_type: bytes = b"text/plain") -> None:
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", content_type), (b"content-length", str(len(body)).encode()),
        (b"x-worker-pid", str(os.getpid()).encode())]})
    await send({"type": "http.response.body", "body": body})


def _mark(path: str | None, line: str) -> None:
    if path:
        with open(path, "a") as fh:
            fh.write(line + "\n")


async def _lifespan(scope: Scope, receive: Any, send: Any) -> None:
    await receive()
    if os.environ.get("FAIL_STARTUP") == "1":
        await send({"type": "lifespan.startup.failed", "message": "fdpass-test-startup-failure"})
        return
    scope["state"]["booted"] = os.getpid()
    await send({"type": "lifespan.startup.complete"})
    await receive()
    _mark(os.environ.get("LIFESPAN_MARKER"), f"shutdown {os.getpid()}")
    await send({"type": "lifespan.shutdown.complete"})


async def _websocket(scope: Scope, receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") == "pid":
            await send({"type": "websocket.send", "text": str(os.getpid())})
        else:
            await send({"type": "websocket.send", "text": message.get("text"),
                        "bytes": message.get("bytes")})


async def _forever(send: Any, marker: str | None) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"x-worker-pid", str(os.getpid()).encode())]})
    reason = "returned"
    try:
        while True:
            await send({"type": "http.response.body", "body": b"x" * 1024, "more_body": True})
            await asyncio.sleep(0.01)
    except OSError:
        reason = "client-gone"
        raise
    finally:
        _mark(marker, f"stopped {reason}")


async def app(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(scope, receive, send)
        return
    if scope["type"] == "websocket":
        await _websocket(scope, receive, send)
        return
    path = scope["path"]
    query = _query(scope)
    if path in ("/", "/pid"):
        await _answer(send, b"hello" if path == "/" else str(os.getpid()).encode())
    elif path == "/sleep":
        _mark(query.get("marker"), f"{os.getpid()} {time.time()}")
        seconds = float(query.get("s", "0.05"))
        start = time.time()
        await asyncio.sleep(seconds)
        await _answer(send, json.dumps({"pid": os.getpid(), "slept": seconds, "start": start,
                                        "end": time.time()}).encode(), content_type=b"json")
    elif path == "/block":
        time.sleep(float(query.get("s", "1")))
        await _answer(send, b"blocked")
    elif path == "/big":
        # A byte pattern whose every 256-byte block is the same: any reordering shows.
        await _answer(send, bytes(range(256)) * (int(query.get("kib", "1024")) * 4))
    elif path == "/forever":
        await _forever(send, query.get("marker"))
    elif path == "/upload":
        digest = hashlib.sha256()
        size = 0
        while True:
            message = await receive()
            digest.update(message.get("body", b""))
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        await _answer(send, json.dumps({"length": size, "sha256": digest.hexdigest()})
                      .encode())
    elif path == "/scope":
        fields = ("path", "raw_path", "root_path", "scheme", "http_version", "client",
                  "server", "query_string", "method")
        view = {k: (v.decode("latin-1") if isinstance(v, bytes) else v)
                for k, v in scope.items() if k in fields}
        await _answer(send, json.dumps(view).encode())
    elif path == "/state":
        await _answer(send, json.dumps(scope.get("state", {})).encode())
    else:
        await _answer(send, b"not found", status=404)
