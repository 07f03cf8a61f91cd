"""A Starlette application served by ``gunicorn_fdpass.ASGIWorker``::

    pip install 'gunicorn-fdpass[asgi]' starlette
    gunicorn -k gunicorn_fdpass.ASGIWorker -w 4 examples.starlette_app:app

Routes: ``/`` (JSON, with the worker's pid), ``/stream?chunks=N&delay=S`` (a streaming
response), ``/upload`` (reads the request body as a stream: its length and SHA-256),
``/state`` (what lifespan startup stored), ``/error`` (an exception: a 500 page),
``/ws`` (a WebSocket echo: text and binary).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
    # What startup prepares (a database pool, a client session...) goes into the state,
    # which every request of this worker sees as request.state.
    yield {"started_by": os.getpid(), "greeting": "hello from lifespan"}


async def hello(request: Request) -> JSONResponse:
    return JSONResponse({"hello": "world", "pid": os.getpid()},
                        headers={"X-Worker-Pid": str(os.getpid())})


async def stream(request: Request) -> StreamingResponse:
    chunks = int(request.query_params.get("chunks", "5"))
    delay = float(request.query_params.get("delay", "0"))

    async def produce() -> AsyncIterator[bytes]:
        for i in range(chunks):
            if delay:
                await asyncio.sleep(delay)
            yield f"chunk {i}\n".encode()

    return StreamingResponse(produce(), media_type="text/plain")


async def upload(request: Request) -> JSONResponse:
    digest = hashlib.sha256()
    size = 0
    async for piece in request.stream():
        digest.update(piece)
        size += len(piece)
    return JSONResponse({"length": size, "sha256": digest.hexdigest()})


async def state(request: Request) -> JSONResponse:
    return JSONResponse({"started_by": request.state.started_by,
                         "greeting": request.state.greeting, "pid": os.getpid()})


async def error(request: Request) -> JSONResponse:
    raise RuntimeError("starlette-example-error")


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                await websocket.send_text(message["text"])
            else:
                await websocket.send_bytes(message["bytes"])
    except WebSocketDisconnect:
        return


app = Starlette(
    routes=[
        Route("/", hello),
        Route("/stream", stream),
        Route("/upload", upload, methods=["POST", "PUT"]),
        Route("/state", state),
        Route("/error", error),
        WebSocketRoute("/ws", echo),
    ],
    lifespan=lifespan,
)
