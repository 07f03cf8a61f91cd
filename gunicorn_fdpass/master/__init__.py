"""Runs in the Gunicorn master: the arbiter glue, the dispatcher (accept, wait for a request
head, queue, hand off, park) and the scheduling policy. Never imported by a worker's request
path; a worker only calls :func:`~gunicorn_fdpass.master.arbiter.open_worker_channel` and
friends around the fork."""
