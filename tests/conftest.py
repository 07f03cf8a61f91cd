"""Shared fixtures for the integration tests (real Gunicorn processes).

The worker class under test comes from ``FDPASS_TEST_WORKER_CLASS`` (default
``gunicorn_fdpass.Worker``), so the harness and the tests can be validated against
Gunicorn's own ``sync`` / ``gthread`` workers.

Markers
-------
``ours_only``   the test only makes sense for gunicorn_fdpass's worker (skipped otherwise)
``keepalive``   the test needs persistent connections (skipped for ``sync``, which closes
                every connection after one response)
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # make ``tests`` importable as a package
    sys.path.insert(0, str(REPO_ROOT))

from tests.support.server import (  # noqa: E402
    GunicornServer,
    is_our_worker,
    worker_class_under_test,
)

_SERVERS_KEY = pytest.StashKey[list]()
SYNC_NAMES = ("sync", "gunicorn.workers.sync.SyncWorker", "egg:gunicorn#sync")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "ours_only: only meaningful for gunicorn_fdpass's worker")
    config.addinivalue_line("markers", "keepalive: needs persistent connections (not sync)")
    config.addinivalue_line("markers", "integration: starts real gunicorn processes")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    wc = worker_class_under_test()
    ours = is_our_worker(wc)
    for item in items:
        if item.get_closest_marker("ours_only") and not ours:
            item.add_marker(pytest.mark.skip(reason=f"only for gunicorn_fdpass (testing -k {wc})"))
        if item.get_closest_marker("keepalive") and wc in SYNC_NAMES:
            item.add_marker(pytest.mark.skip(reason="-k sync closes every connection"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for i, srv in enumerate(item.stash.get(_SERVERS_KEY, [])):
            pid = srv.proc.pid if srv.proc else None
            title = f"gunicorn log {i} ({srv.worker_class}, pid {pid})"
            report.sections.append((title, srv.log_text()[-20000:]))


def attach_server(request: pytest.FixtureRequest, srv: GunicornServer) -> None:
    """Record ``srv`` so its log is shown if the current test fails."""
    item = request.node
    if isinstance(item, pytest.Item):
        item.stash.setdefault(_SERVERS_KEY, []).append(srv)


@pytest.fixture(scope="session")
def worker_class() -> str:
    return worker_class_under_test()


@pytest.fixture(scope="session")
def ours(worker_class: str) -> bool:
    return is_our_worker(worker_class)


@contextlib.contextmanager
def _servers(request: pytest.FixtureRequest | None
             ) -> Iterator[Callable[..., GunicornServer]]:
    """Yield a factory of started servers; stop and clean up every one of them afterwards.

    With ``request``, each server's log is attached to the report of a failing test."""
    servers: list[GunicornServer] = []

    def factory(**kwargs: Any) -> GunicornServer:
        srv = GunicornServer(**kwargs)
        servers.append(srv)
        if request is not None:
            attach_server(request, srv)
        srv.start()
        return srv

    try:
        yield factory
    finally:
        for srv in servers:
            try:
                srv.stop(timeout=10)
            finally:
                srv.cleanup()


@pytest.fixture
def make_server(request: pytest.FixtureRequest) -> Iterator[Callable[..., GunicornServer]]:
    """Factory: ``make_server(**GunicornServer kwargs)`` -> a started server, stopped
    (and cleaned up) at the end of the test."""
    with _servers(request) as factory:
        yield factory


@pytest.fixture
def stats_path(tmp_path: Path) -> Path:
    """Where a test's server writes its live numbers (``FDPASS_STATS_FILE``; see
    tests/support/stats.py)."""
    return tmp_path / "stats.json"


@pytest.fixture(scope="module")
def module_server_factory() -> Iterator[Callable[..., GunicornServer]]:
    """Like ``make_server`` but the servers live for the whole module."""
    with _servers(None) as factory:
        yield factory


def pytest_report_header(config: pytest.Config) -> str:
    return "gunicorn worker class under test: {} (FDPASS_TEST_WORKER_CLASS={})".format(
        worker_class_under_test(), os.environ.get("FDPASS_TEST_WORKER_CLASS", "<unset>"))
