"""Runs in a worker process: the Gunicorn worker class and its connection loop.

``gunicorn_fdpass.worker:Worker`` is the class Gunicorn loads (``egg:gunicorn-fdpass#fdpass``).
"""

from .wsgi_worker import Worker

__all__ = ["Worker"]
