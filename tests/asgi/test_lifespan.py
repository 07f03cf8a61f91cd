"""The lifespan protocol (gunicorn_fdpass/asgi/lifespan.py), driven directly."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gunicorn_fdpass.asgi.lifespan import Lifespan, LifespanFailed
from tests.support.serve import FakeLog


def make_app(events: list[str], *, fail: str | None = None) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        message = await receive()
        events.append(message["type"])
        if fail == "startup":
            await send({"type": "lifespan.startup.failed", "message": "no database"})
            return
        scope["state"]["db"] = "pool"
        await send({"type": "lifespan.startup.complete"})
        message = await receive()
        events.append(message["type"])
        await send({"type": "lifespan.shutdown.complete"})
    return app


def test_startup_fills_the_state_and_shutdown_runs_after() -> None:
    events: list[str] = []

    async def main() -> dict[str, Any]:
        lifespan = Lifespan(make_app(events), FakeLog())
        assert await lifespan.startup("auto") is True
        assert events == ["lifespan.startup"]
        await lifespan.shutdown()
        return lifespan.state

    assert asyncio.run(main()) == {"db": "pool"}
    assert events == ["lifespan.startup", "lifespan.shutdown"]


def test_startup_failed_raises_with_the_apps_message() -> None:
    async def main() -> None:
        await Lifespan(make_app([], fail="startup"), FakeLog()).startup("auto")

    with pytest.raises(LifespanFailed, match="no database"):
        asyncio.run(main())


async def no_lifespan(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        raise ValueError("only http here")  # what Django's ASGI handler does


def test_an_app_without_lifespan_runs_in_auto_mode_and_fails_in_on_mode() -> None:
    log = FakeLog()

    async def main(mode: str) -> bool:
        lifespan = Lifespan(no_lifespan, log)
        supported = await lifespan.startup(mode)
        await lifespan.shutdown()  # nothing to do: never started
        return supported

    assert asyncio.run(main("auto")) is False
    assert "not supported" in log.at("info")[0]
    with pytest.raises(LifespanFailed):
        asyncio.run(main("on"))


def test_off_mode_never_calls_the_app() -> None:
    events: list[str] = []
    assert asyncio.run(Lifespan(make_app(events), FakeLog()).startup("off")) is False
    assert events == []


def test_a_silent_startup_times_out() -> None:
    async def silent(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await asyncio.Event().wait()

    async def main() -> bool:
        lifespan = Lifespan(silent, FakeLog(), timeout=0.05)
        try:
            return await lifespan.startup("on")
        finally:
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

    with pytest.raises(LifespanFailed, match="no answer"):
        asyncio.run(main())
