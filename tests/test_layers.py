"""The layering the docs promise, checked on the imports: http/ is sans-IO and knows neither
Gunicorn nor the processes that drive it; a worker's code does not reach into the master."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "gunicorn_fdpass"

#: Modules whose use would mean I/O, blocking or a Gunicorn object inside http/.
SANS_IO_FORBIDDEN = ("socket", "select", "selectors", "asyncio", "ssl", "threading", "gunicorn")


def _imports(path: Path) -> list[str]:
    """Absolute names of what ``path`` imports (relative imports resolved in the package)."""
    package = ["gunicorn_fdpass", *path.relative_to(PACKAGE).parent.parts]
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, node.module] if node.module else base)
            names.append(module)
            names += [f"{module}.{alias.name}" for alias in node.names]
    return names


@pytest.mark.parametrize("path", sorted((PACKAGE / "http").glob("*.py")), ids=lambda p: p.name)
def test_http_is_sans_io(path: Path) -> None:
    bad = [name for name in _imports(path)
           if name.split(".")[0] in SANS_IO_FORBIDDEN
           or name.startswith(("gunicorn_fdpass.master", "gunicorn_fdpass.worker"))]
    assert not bad, f"{path.name} imports {bad}"


@pytest.mark.parametrize("path", sorted((PACKAGE / "worker").glob("*.py")), ids=lambda p: p.name)
def test_worker_code_uses_only_the_fork_hooks_of_the_master(path: Path) -> None:
    reached = {name for name in _imports(path) if name.startswith("gunicorn_fdpass.master")}
    assert reached <= {"gunicorn_fdpass.master", "gunicorn_fdpass.master.arbiter"}, reached
