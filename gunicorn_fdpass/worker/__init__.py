"""Runs in a worker process: the Gunicorn worker class and its connection loop.

- :mod:`.wsgi_worker`: ``Worker``, the class Gunicorn loads
  (``gunicorn_fdpass.worker:Worker``, ``egg:gunicorn-fdpass#fdpass``).
- :mod:`.connection`: ``serve_connection`` and the per-connection ``ConnectionLoop``.
- :mod:`.cycle`: ``RequestCycle``, one request's exchange, made fresh per request;
  :mod:`.body_reader`: its body from the socket.
- :mod:`.transport`: the client socket; :mod:`.api`: the hooks and outcomes shared with
  ``Worker``.
"""

from .wsgi_worker import Worker

__all__ = ["Worker"]
