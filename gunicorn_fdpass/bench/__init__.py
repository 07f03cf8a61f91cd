"""Compare Gunicorn worker classes on your own app: ``python -m gunicorn_fdpass.bench``.

The tool starts one Gunicorn master per worker class (for a WSGI app ``sync``, ``gthread`` and
``gunicorn_fdpass.Worker``; for an ASGI app ``asgi``, ``uvicorn_worker.UvicornWorker``,
``uvicorn_worker.UvicornH11Worker`` and ``gunicorn_fdpass.ASGIWorker``; all with the same worker
count) on 127.0.0.1, drives the same scenarios against each of them, and prints a table with
every number also given as a ratio against ``sync`` (``asgi``). A class that cannot be imported
is skipped. Load comes from ``wrk`` when it is installed and from a built-in asyncio load
generator otherwise (and always for the scenarios that need raw control of the sockets).

Modules:

- :mod:`.stats`: percentiles, Jain's fairness index, the ratio table (pure);
- :mod:`.expect`: which statuses count as success, and the failure message (pure);
- :mod:`.wrk`: running ``wrk`` and parsing its output;
- :mod:`.loadgen`: the built-in asyncio HTTP/1.1 load generator (closed and open loop);
- :mod:`.probe`: is the app ASGI or WSGI, which worker classes load (in a child process);
- :mod:`.choose`: the app, its kind, the classes, the baseline and the scenarios of a run;
- :mod:`.servers`: starting and stopping the Gunicorn masters under test;
- :mod:`.cpu`: CPU time of master, workers and machine from ``/proc``;
- :mod:`.affinity`: ``--pin-master``, the master on one CPU and everything else on the others;
- :mod:`.measure`: what the scenarios share (options, target, throughput runs);
- :mod:`.scenarios`: the scenarios themselves; :mod:`.balance`: the balance scenario;
- :mod:`.apps`: the bench's own WSGI app (``/``, ``/slow?ms=N``, ``/cpu?ms=N``,
  ``X-Worker-Pid``); :mod:`.asgi_apps`: the same for ASGI;
- :mod:`.runner`: running every scenario against every class, checking the statuses;
- :mod:`.report`: results, table rows and the JSON document;
- :mod:`.cli`: the command line; :mod:`.plots`: PNG plots.
"""

from __future__ import annotations

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the command line tool; see ``python -m gunicorn_fdpass.bench --help``."""
    from .cli import main as cli_main

    return cli_main(argv)
