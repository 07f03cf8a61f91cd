"""ASGI 3.0 on the worker side: what :class:`gunicorn_fdpass.ASGIWorker` runs on its event loop.

- :mod:`.connection`: ``AsgiConnection``, one client connection (an asyncio protocol driving
  the sans-IO :mod:`gunicorn_fdpass.http` layer): request heads, keep-alive, hand back, close.
- :mod:`.http_cycle`: ``HttpCycle``, one request's scope, ``receive``/``send`` and response.
- :mod:`.websocket`: ``WebSocketSession``, a WebSocket with wsproto.
- :mod:`.lifespan`: startup and shutdown, and the ``state`` requests get.
- :mod:`.scope`: the scopes (pure); :mod:`.phrases`: reason phrases; :mod:`.config`: the
  settings; :mod:`.loop`: uvloop or asyncio; :mod:`.api`: what a connection asks of its
  worker; :mod:`.types`: the ASGI callables' types.

Nothing here imports Gunicorn; the worker class is :mod:`gunicorn_fdpass.worker.asgi_worker`.
"""
