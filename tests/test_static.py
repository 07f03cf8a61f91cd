"""The package type-checks under ``mypy --strict`` and is ``ruff`` clean."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str) -> list[str]:
    if shutil.which(name, path=str(Path(sys.executable).parent)):
        return [str(Path(sys.executable).parent / name)]
    pytest.fail(f"{name} is not installed next to {sys.executable}; install the test extra")


def test_mypy_strict() -> None:
    result = subprocess.run([*_tool("mypy"), "gunicorn_fdpass"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff() -> None:
    result = subprocess.run([*_tool("ruff"), "check", "gunicorn_fdpass", "tests", "examples"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
