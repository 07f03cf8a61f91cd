"""Every in-process ASGI connection test runs twice: with the connection started on the
direct transport (as the worker starts a plain connection) and on the loop's transport."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import asgi_serve


@pytest.fixture(params=[True, False], ids=["direct", "loop"])
def connection_start(request: pytest.FixtureRequest) -> Iterator[None]:
    asgi_serve.START.direct = request.param
    yield
    asgi_serve.START.direct = True
