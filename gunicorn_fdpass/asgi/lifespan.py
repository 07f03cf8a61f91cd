"""The ASGI lifespan protocol in one worker: startup before the first connection, shutdown
after the last, and the ``state`` the application fills in at startup, which every request's
scope gets a shallow copy of.

Modes as Gunicorn's ``--asgi-lifespan``: ``auto`` runs it and carries on without it when the
application does not support it (it raises or returns before answering the startup event);
``on`` treats that as a failure too; ``off`` never runs it. ``lifespan.startup.failed`` is
always a failure: the worker stops with Gunicorn's boot-failure exit.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from .types import ASGIApp, Message

__all__ = ["Lifespan", "LifespanFailed"]

#: Seconds the application has to answer the startup or the shutdown event (Gunicorn's).
LIFESPAN_TIMEOUT: Final = 30.0


class LifespanFailed(Exception):
    """The application cannot start: it said ``lifespan.startup.failed`` (or, with
    ``--asgi-lifespan on``, did not complete startup)."""


class Lifespan:
    """The lifespan scope of one worker's application, run as a task."""

    def __init__(self, app: ASGIApp, log: Any, timeout: float = LIFESPAN_TIMEOUT) -> None:
        self.app = app
        self.log = log
        self.timeout = timeout
        self.state: dict[str, Any] = {}
        self.running = False  # startup completed: shutdown is due
        self._shutdown_due: asyncio.Future[None] | None = None
        self._answer: asyncio.Future[Message] | None = None
        self._task: asyncio.Task[None] | None = None
        self._sent_startup = False

    async def startup(self, mode: str) -> bool:
        """Run startup. True if the application completed it; False if it does not support
        lifespan (``auto``). Raises :class:`LifespanFailed`."""
        if mode == "off":
            return False
        loop = asyncio.get_running_loop()
        self._shutdown_due = loop.create_future()
        self._answer = loop.create_future()
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"},
                 "state": self.state}
        self._task = loop.create_task(self._run(scope))
        answer = await self._wait_answer("startup")
        kind = answer.get("type")
        if kind == "lifespan.startup.complete":
            self.running = True
            return True
        if kind == "lifespan.startup.failed":
            raise LifespanFailed(answer.get("message") or "lifespan.startup.failed")
        # No answer: the application raised or returned at once.
        if mode == "on":
            raise LifespanFailed("the application did not complete startup "
                                 f"({answer.get('message', kind)})")
        self.log.info("ASGI lifespan is not supported by the application (%s): going on "
                      "without it", answer.get("message", kind))
        return False

    async def shutdown(self) -> None:
        """Run shutdown (only after a completed startup); failures are logged."""
        if not self.running:
            return
        self.running = False
        assert self._shutdown_due is not None
        self._answer = asyncio.get_running_loop().create_future()
        self._shutdown_due.set_result(None)
        answer = await self._wait_answer("shutdown")
        if answer.get("type") == "lifespan.shutdown.failed":
            self.log.error("ASGI lifespan shutdown failed: %s", answer.get("message", ""))
        elif answer.get("type") != "lifespan.shutdown.complete":
            self.log.error("ASGI lifespan shutdown did not complete (%s)",
                           answer.get("message", answer.get("type")))
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def _wait_answer(self, phase: str) -> Message:
        assert self._answer is not None
        try:
            return await asyncio.wait_for(asyncio.shield(self._answer), self.timeout)
        except asyncio.TimeoutError:
            return {"type": "timeout", "message": f"no answer to {phase} in {self.timeout:g}s"}

    async def _run(self, scope: dict[str, Any]) -> None:
        try:
            await self.app(scope, self._receive, self._send)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self.running:
                self.log.exception("ASGI lifespan task failed")
            # Before startup this usually means "lifespan unsupported" (said at info).
            self._set_answer({"type": "raised", "message": f"{type(exc).__name__}: {exc}"})
            return
        self._set_answer({"type": "returned", "message": "the lifespan task returned"})

    async def _receive(self) -> Message:
        if not self._sent_startup:
            self._sent_startup = True
            return {"type": "lifespan.startup"}
        assert self._shutdown_due is not None
        await self._shutdown_due
        return {"type": "lifespan.shutdown"}

    async def _send(self, message: Message) -> None:
        kind = message.get("type")
        if kind not in ("lifespan.startup.complete", "lifespan.startup.failed",
                        "lifespan.shutdown.complete", "lifespan.shutdown.failed"):
            raise RuntimeError(f"unexpected ASGI lifespan message {kind!r}")
        self._set_answer(message)

    def _set_answer(self, message: Message) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_result(message)
