"""``python -m gunicorn_fdpass.bench``: see :mod:`gunicorn_fdpass.bench.cli`."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
