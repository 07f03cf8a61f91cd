"""Before anything starts: is the app ASGI or WSGI, and which worker classes can be loaded?

Both questions are answered in a child process (``python -m gunicorn_fdpass.bench.probe``)
started like the servers (same interpreter, directory and ``PYTHONPATH``), so that importing
the user's app or a worker class has no side effect on the bench itself and sees exactly
what Gunicorn will see. The child prints one JSON object; :func:`run` reads it.

An app is ASGI (version 3) when it is a coroutine function taking ``(scope, receive, send)``,
or an object whose ``__call__`` is one (Starlette, FastAPI, Django's ``ASGIHandler``); anything
else is taken for WSGI. A worker class that cannot be imported (its package is missing, or the
module lacks the class, as ``gunicorn_fdpass.ASGIWorker`` did before it existed) is *not
installed*: the bench skips it instead of failing the run.
"""

from __future__ import annotations

import importlib
import inspect
import json
import subprocess
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

ASGI = "asgi"
WSGI = "wsgi"
#: What the last line of a failed load says when the code is missing (not broken): a module,
#: an entry point (``ImportError``) or a distribution (``egg:dist#name``).
_MISSING = ("ModuleNotFoundError", "ImportError", "No module named", "PackageNotFoundError")


def is_asgi(obj: object) -> bool:
    """Whether ``obj`` is an ASGI 3 application (see the module docstring)."""
    if inspect.isclass(obj):
        return False  # calling a class builds an object: WSGI's or ASGI 2's shape, not ASGI 3
    if inspect.iscoroutinefunction(obj):  # functions, bound methods, functools.partial
        return _takes_three(obj)
    if not callable(obj):
        return False
    # Starlette, FastAPI, Django's ASGIHandler: an object with ``async def __call__``.
    call = type(obj).__call__
    return inspect.iscoroutinefunction(call) and _takes_three(obj.__call__)


def _takes_three(fn: Any) -> bool:
    """Whether ``fn`` can be called with three positional arguments and needs no more."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return True  # a coroutine function whose signature is hidden: trust its kind
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    required_kw = [p for p in params if p.kind == p.KEYWORD_ONLY and p.default is p.empty]
    varargs = any(p.kind == p.VAR_POSITIONAL for p in params)
    return not required_kw and len(required) <= 3 and (len(positional) >= 3 or varargs)


def app_kind(spec: str) -> str:
    """Import ``spec`` (``module:callable``, as Gunicorn does) and say ``asgi`` or ``wsgi``.

    Raises whatever importing the app raises.
    """
    from gunicorn.util import import_app

    return ASGI if is_asgi(import_app(spec)) else WSGI


def class_problem(name: str) -> str | None:
    """None if Gunicorn can load the worker class ``name``, else why not: ``not installed:
    ...`` when its module or the class is missing, ``cannot be loaded: ...`` otherwise."""
    try:
        if "." in name and not name.startswith("egg:"):
            module, _, attr = name.rpartition(".")
            try:
                mod = importlib.import_module(module)
            except ImportError as exc:
                return f"not installed: {exc}"
            if not hasattr(mod, attr):
                return f"not installed: {module} has no {attr}"
            return None
        from gunicorn.util import load_class

        load_class(name)  # short names (sync, asgi, ...) and egg:dist#name entry points
    except Exception as exc:
        last = str(exc).strip().rstrip("]").strip().splitlines()
        text = last[-1] if last else type(exc).__name__
        if any(sign in text for sign in _MISSING):
            return f"not installed: {text}"
        return f"cannot be loaded: {text}"
    return None


@dataclass
class Findings:
    """What the child process found."""

    #: ``asgi`` / ``wsgi``, or None when the app was not asked about or failed to import.
    kind: str | None = None
    #: Why the app could not be imported (its last traceback line), when it could not.
    app_error: str | None = None
    #: Worker class name -> why it cannot be used; classes that can are absent.
    unusable: dict[str, str] = field(default_factory=dict)


def examine(app: str | None, classes: Sequence[str]) -> Findings:
    """Answer both questions in this process (what the child runs)."""
    found = Findings()
    if app is not None:
        try:
            found.kind = app_kind(app)
        except BaseException as exc:  # SystemExit from a Django settings error, too
            lines = traceback.format_exception_only(type(exc), exc)
            found.app_error = lines[-1].strip() if lines else type(exc).__name__
    for name in classes:
        problem = class_problem(name)
        if problem is not None:
            found.unusable[name] = problem
    return found


def run(app: str | None, classes: Sequence[str], cwd: str, env: dict[str, str],
        timeout: float = 60.0) -> Findings:
    """Run :func:`examine` in a child process in ``cwd`` with ``env``.

    A child that fails or says nothing readable leaves every question open (kind None, every
    class assumed usable): the servers' own start-up then reports the problem.
    """
    cmd = [sys.executable, "-m", "gunicorn_fdpass.bench.probe", json.dumps(
        {"app": app, "classes": list(classes)})]
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
        doc = json.loads(proc.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return Findings(app_error=None if app is None else "the probe process failed")
    return Findings(doc.get("kind"), doc.get("app_error"), dict(doc.get("unusable") or {}))


def main(argv: Sequence[str]) -> int:
    """Child entry point: ``argv[0]`` is ``{"app": ..., "classes": [...]}``; prints JSON."""
    request = json.loads(argv[0])
    found = examine(request.get("app"), request.get("classes") or [])
    # The app's import may have printed; the answer is the last line.
    sys.stdout.write("\n" + json.dumps({"kind": found.kind, "app_error": found.app_error,
                                        "unusable": found.unusable}) + "\n")
    return 0


if __name__ == "__main__":  # ``-m`` puts the current directory first on sys.path
    raise SystemExit(main(sys.argv[1:]))
