"""The compiled parts of the package, and the switch back to pure Python.

Two kinds of compiled code may sit beside the sources, both built by ``pip install`` when a C
compiler is there (setup.py) and both optional:

- the master's C core, :mod:`gunicorn_fdpass.master._core` (its Python twin is
  :mod:`gunicorn_fdpass.master.fastpath`);
- the per-request HTTP layer compiled with mypyc from its own typed sources (listed in
  setup.py): the same modules, so a compiled ``http/request_head`` is a
  ``request_head.cpython-3XX-....so`` beside ``request_head.py``, which Python imports first.

``FDPASS_NO_EXTENSIONS=1`` (as aiohttp's ``AIOHTTP_NO_EXTENSIONS``) turns both off for the
process: the master uses its Python twin, and :func:`prefer_sources` makes every module of the
package load from its ``.py`` file. The tests run both ways.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from types import ModuleType

__all__ = ["compiled_modules", "extensions_disabled", "prefer_sources"]

_PACKAGE = __name__.rpartition(".")[0]


def extensions_disabled() -> bool:
    """Whether ``FDPASS_NO_EXTENSIONS`` asks for pure Python (set, and not ``0``)."""
    return os.environ.get("FDPASS_NO_EXTENSIONS", "") not in ("", "0")


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Finds the package's modules as their ``.py`` files, ahead of any compiled twin."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith(_PACKAGE + ".") or path is None:
            return None
        name = fullname.rpartition(".")[2]
        for folder in path:
            source = os.path.join(folder, name + ".py")
            if os.path.isfile(source):
                return importlib.util.spec_from_file_location(fullname, source)
        return None  # a package, or a module without source (the C core): the usual way


def prefer_sources() -> None:
    """Load the package's modules from source from now on (idempotent). Called by the
    package itself at import when :func:`extensions_disabled`, before any submodule loads."""
    if not any(isinstance(finder, _SourceFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _SourceFinder())


def compiled_modules() -> list[str]:
    """Names of the package's loaded modules that run compiled code (sorted)."""
    return sorted(name for name, module in list(sys.modules.items())
                  if name.startswith(_PACKAGE + ".") and _is_compiled(module))


def _is_compiled(module: ModuleType) -> bool:
    spec = getattr(module, "__spec__", None)
    return spec is not None and isinstance(spec.loader, importlib.machinery.ExtensionFileLoader)
