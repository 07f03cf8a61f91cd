"""Compare Gunicorn worker classes on your own WSGI app: ``python -m gunicorn_fdpass.bench``.

The tool starts one Gunicorn master per worker class (``sync``, ``gthread`` and
``gunicorn_fdpass.Worker`` by default, all with the same worker count) on 127.0.0.1, drives the
same scenarios against each of them, and prints a table with every number also given as a ratio
against ``sync``. Load comes from ``wrk`` when it is installed and from a built-in asyncio load
generator otherwise (and always for the scenarios that need raw control of the sockets).

Modules:

- :mod:`.stats`: percentiles, Jain's fairness index, the ratio table (pure);
- :mod:`.wrk`: running ``wrk`` and parsing its output;
- :mod:`.loadgen`: the built-in asyncio HTTP/1.1 load generator (closed and open loop);
- :mod:`.servers`: starting and stopping the Gunicorn masters under test;
- :mod:`.scenarios`: the scenarios themselves;
- :mod:`.apps`: the bench's own WSGI app (``/``, ``/slow?ms=N``, ``X-Worker-Pid``);
- :mod:`.cli`: the command line, JSON output and plots.
"""

from __future__ import annotations

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the command line tool; see ``python -m gunicorn_fdpass.bench --help``."""
    from .cli import main as cli_main

    return cli_main(argv)
