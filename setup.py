"""Builds the optional compiled parts (see gunicorn_fdpass/compiled.py):

- the master's C core, gunicorn_fdpass/master/_core.c;
- the per-request HTTP layer, compiled with mypyc from its typed sources (:data:`MYPYC`).

Everything else is in pyproject.toml. A machine without a compiler or Python headers still
installs: a failed build is reported and the pure Python is used. ``FDPASS_NO_EXTENSIONS=1``
at install time skips the builds altogether.
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
    print(f"WARNING: a compiled part of gunicorn-fdpass was not built ({exc}); "
          "its pure-Python source is used instead.", file=sys.stderr)


#: What every request runs through in a worker: parsing the head around h11, the field
#: rules, keep-alive, framing, the response, the ASGI connection, request cycle and scope,
#: and the link to the master. mypyc compiles these typed sources as they are (measured in
#: docs/benchmarks.md); docs/internal-interfaces.md says what that asks of them.
MYPYC = [
    "gunicorn_fdpass/http/request_head.py",
    "gunicorn_fdpass/http/request_rules.py",
    "gunicorn_fdpass/http/fields.py",
    "gunicorn_fdpass/http/body_framing.py",
    "gunicorn_fdpass/http/keep_alive.py",
    "gunicorn_fdpass/http/response.py",
    "gunicorn_fdpass/http/serialize.py",
    "gunicorn_fdpass/asgi/scope.py",
    "gunicorn_fdpass/asgi/http_cycle.py",
    "gunicorn_fdpass/asgi/connection.py",
    "gunicorn_fdpass/link/messages.py",
    "gunicorn_fdpass/link/channel.py",
]


def _mypyc_extensions() -> list[Extension]:
    try:
        from mypyc.build import mypycify
    except ImportError as exc:  # mypy is a build requirement; an offline build may lack it
        _skipped(exc)
        return []
    try:
        # One shared library for the group, named after the package.
        return list(mypycify(MYPYC, opt_level="3", group_name="gunicorn_fdpass"))
    except SystemExit:  # mypyc's type check failed: its errors are printed above
        _skipped(Exception("mypyc's type check failed"))
    except Exception as exc:
        _skipped(exc)
    return []


extensions: list[Extension] = []
if os.environ.get("FDPASS_NO_EXTENSIONS", "") in ("", "0"):
    extensions = [
        Extension("gunicorn_fdpass.master._core", ["gunicorn_fdpass/master/_core.c"],
                  extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"]),
        *_mypyc_extensions(),
    ]

setup(ext_modules=extensions, cmdclass={"build_ext": OptionalBuildExt})
