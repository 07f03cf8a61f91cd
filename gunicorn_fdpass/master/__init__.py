"""Runs in the Gunicorn master: the arbiter glue (:mod:`.arbiter`), the dispatcher facade
(:mod:`.dispatcher`) over its event loop (:mod:`.loop`), intake (:mod:`.intake`: accept, head
wait, back-pressure), connection states and their one owner (:mod:`.states`, :mod:`.table`,
:mod:`.timers`), queue and hand-off (:mod:`.handoff`), worker links (:mod:`.links`), the
scheduling policy (:mod:`.scheduler`) and the live numbers (:mod:`.report`). Never imported by
a worker's request path; a worker only calls
:func:`~gunicorn_fdpass.master.arbiter.open_worker_channel` and friends around the fork."""
