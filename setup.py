"""Builds the optional C core of the master (gunicorn_fdpass/master/_core.c).

Everything else is in pyproject.toml. A machine without a compiler or Python headers still
installs: a failed build is reported and the pure-Python twin (master/fastpath.py) is used.
``FDPASS_NO_EXTENSIONS=1`` at install time skips the build altogether.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):  # type: ignore[misc]
    """build_ext that warns instead of failing the install."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler at all (DistutilsPlatformError and kin)
            _skipped(exc)

    def build_extension(self, ext: Any) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # compile or link error: fall back to pure Python
            _skipped(exc)


def _skipped(exc: Exception) -> None:
    print(f"WARNING: the C core of gunicorn-fdpass was not built ({exc}); "
          "the pure-Python fast path is used instead.", file=sys.stderr)


extensions = [] if os.environ.get("FDPASS_NO_EXTENSIONS", "") not in ("", "0") else [
    Extension("gunicorn_fdpass.master._core", ["gunicorn_fdpass/master/_core.c"],
              extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"]),
]

setup(ext_modules=extensions, cmdclass={"build_ext": OptionalBuildExt})
