"""What a run compares, from the command line: the app and its kind (WSGI or ASGI), the worker
classes (and which of them cannot be loaded), the baseline and the scenarios.

A WSGI app is compared under ``sync``, ``gthread`` and ``gunicorn_fdpass.Worker``; an ASGI app
under Gunicorn's ``asgi``, uvicorn's two workers and ``gunicorn_fdpass.ASGIWorker``. The kind
is given (``--asgi`` / ``--wsgi``), known (the bundled apps), or found by importing the app in
a child process (:mod:`.probe`), which also tries every worker class: one that cannot be
imported is skipped (its cells read ``not installed``) instead of failing the run.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from . import probe
from .measure import ASGI, ASGI_BENCH_APP, BENCH_APP, WSGI
from .scenarios import SCENARIO_NAMES, SCENARIOS, Scenario, by_name, default_names
from .servers import WorkerSpec, server_env

DEFAULT_APP = "examples.hello:app"
#: The worker classes compared for each kind of app, and the one the ratios are against.
DEFAULT_CLASSES = {
    WSGI: "sync,gthread,gunicorn_fdpass.Worker",
    ASGI: "asgi,uvicorn_worker.UvicornWorker,uvicorn_worker.UvicornH11Worker,"
          "gunicorn_fdpass.ASGIWorker",
}
DEFAULT_BASELINE = {WSGI: "sync", ASGI: "asgi"}
#: Used when no app is given and the repository's example is not there.
NO_APP_MESSAGE = (
    "no app given, and the default {default} (the repository's example, not part of the "
    "installed package) is not importable from {base}.\n"
    "Pass your app as module:callable, e.g.\n"
    "  python -m gunicorn_fdpass.bench myproject.wsgi:application --chdir /path/to/project\n"
    "or measure the bench's own app:\n"
    "  python -m gunicorn_fdpass.bench gunicorn_fdpass.bench.apps:app\n"
    "  python -m gunicorn_fdpass.bench --asgi      # its ASGI twin, under the ASGI classes\n"
    "or run from a gunicorn-fdpass checkout.")
#: Short names for the bundled examples: spec, and a file that must exist for it.
ALIASES: dict[str, tuple[str, str]] = {
    "hello": (DEFAULT_APP, "examples/hello.py"),
    "flask": ("examples.flask_app:app", "examples/flask_app.py"),
    "django": ("examples.django_project.wsgi:application", "examples/django_project/wsgi.py"),
}
#: Apps whose kind is known without importing them.
KNOWN_KINDS = {DEFAULT_APP: WSGI, BENCH_APP: WSGI, ASGI_BENCH_APP: ASGI,
               **{alias: WSGI for alias in ALIASES},
               **{spec: WSGI for spec, _ in ALIASES.values()}}
#: What to install for a skipped class, by the start of its name.
INSTALL_HINTS = {"uvicorn": "pip install 'gunicorn-fdpass[bench-asgi]'"}


def resolve_app(app: str, chdir: str | None) -> tuple[str, str]:
    """Map an alias (``hello``, ``flask``, ``django``) to ``(app spec, directory)``.

    The aliases and the default app name the bundled examples and need the repository root
    as the directory (``--chdir``, or the current one): elsewhere this stops with a message
    saying what to pass instead. Anything else is returned unchanged.
    """
    base = Path(chdir or os.getcwd()).resolve()
    if app in ALIASES:
        spec, needed = ALIASES[app]
        if not (base / needed).exists():
            raise SystemExit(f"{app}: {needed} not found under {base}; run from the "
                             "repository root, use --chdir, or give the app as module:callable")
        return spec, str(base)
    if app == DEFAULT_APP and not (base / "examples" / "hello.py").exists():
        raise SystemExit(NO_APP_MESSAGE.format(default=DEFAULT_APP, base=base))
    return app, str(base)


@dataclass(frozen=True)
class Choice:
    """Everything a run needs to know about what it compares."""

    app: str
    cwd: str
    kind: str
    specs: list[WorkerSpec]
    scenarios: list[Scenario]
    baseline: str
    #: Worker class name -> why it is skipped (``not installed: ...``).
    skipped: dict[str, str]


def choose(args: argparse.Namespace, progress: TextIO) -> Choice:
    """Decide what ``args`` compare; stops (SystemExit) on anything that cannot run."""
    names = _scenario_names(args.scenarios)
    app = args.app or (ASGI_BENCH_APP if args.asgi else DEFAULT_APP)
    given = ASGI if args.asgi else WSGI if args.wsgi else KNOWN_KINDS.get(app)
    cwd = str(Path(args.chdir or os.getcwd()).resolve())
    if names is None or any(not by_name(n).uses_bench_app for n in names):
        app, cwd = resolve_app(app, args.chdir)
    # Either kind's classes may run: try them all in the one child process.
    texts = _class_texts(args, WSGI) + _class_texts(args, ASGI)
    candidates = list(dict.fromkeys(WorkerSpec.parse(t).worker_class for t in texts))
    found = probe.run(None if given else app, candidates, cwd, server_env(cwd))
    kind = given or found.kind or WSGI
    if given is None:
        if found.kind is None:
            progress.write(f"could not import {app} to tell ASGI from WSGI ({found.app_error});"
                           " taking it for WSGI: pass --asgi if it is an ASGI app\n")
        else:
            progress.write(f"{app}: {kind.upper()} app, compared under "
                           f"{'ASGI' if kind == ASGI else 'WSGI'} worker classes\n")
    specs = worker_specs(args, kind)
    skipped = {s.worker_class: found.unusable[s.worker_class] for s in specs
               if s.worker_class in found.unusable}
    runnable = [s.label for s in specs if s.worker_class not in skipped]
    if not runnable:
        raise SystemExit("none of the worker classes can be loaded:\n" + "\n".join(
            f"  {name}: {why}" for name, why in skipped.items()))
    wanted = args.baseline or DEFAULT_BASELINE[kind]
    baseline = wanted if wanted in runnable else runnable[0]
    chosen = [s for s in SCENARIOS if s.name in (names or default_names(kind))]
    return Choice(app, cwd, kind, specs, chosen, baseline, skipped)


def _scenario_names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIO_NAMES]
    if unknown or not names:
        raise SystemExit(f"unknown scenarios {unknown}; choose from {','.join(SCENARIO_NAMES)}")
    return names


def _class_texts(args: argparse.Namespace, kind: str) -> list[str]:
    text = args.classes if args.classes is not None else DEFAULT_CLASSES[kind]
    return [t for t in text.split(",") if t.strip()] + list(args.worker_class)


def worker_specs(args: argparse.Namespace, kind: str) -> list[WorkerSpec]:
    """The classes to compare for an app of ``kind``: ``--classes`` (or the kind's default)
    and every ``-k``, without repeats."""
    specs: list[WorkerSpec] = []
    for text in _class_texts(args, kind):
        spec = WorkerSpec.parse(text, default_threads=args.threads)
        if spec not in specs:
            specs.append(spec)
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise SystemExit(f"worker classes with the same column name: {labels}")
    if not specs:
        raise SystemExit("no worker class to compare")
    return specs


def skip_summary(skipped: Sequence[dict[str, str]]) -> list[str]:
    """One line per class that did not run, with what to install when we know it."""
    lines = []
    for s in skipped:
        hint = next((h for prefix, h in INSTALL_HINTS.items()
                     if s["worker_class"].startswith(prefix)), None)
        lines.append(f"skipped {s['worker']} ({s['worker_class']}): {s['reason']}"
                     + (f"; {hint}" if hint else ""))
    return lines
