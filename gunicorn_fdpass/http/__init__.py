"""Sans-IO HTTP/1.1: nothing here touches a socket, blocks, or knows Gunicorn. A driver (the
blocking worker in :mod:`gunicorn_fdpass.worker` today) feeds bytes in and sends the bytes
that come out, so another driver (an asyncio worker) can use it unchanged.

- :mod:`.request_rules`: Gunicorn's request settings, the parsed request, where a head ends.
- :mod:`.request_head`: h11 parses the client's head; Gunicorn's rules on the raw bytes before
  and on h11's ``Request`` event after.
- :mod:`.fields`: field rules and header policy (header and trailer sections).
- :mod:`.body_framing`: the body read through h11, with Gunicorn's chunk rules.
- :mod:`.proxy_protocol`: PROXY protocol v1/v2 and the marker that survives parking.
- :mod:`.keep_alive`: the one keep / hand back / close decision.
- :mod:`.response`: the response's framing and output queue; :mod:`.serialize`: the one
  serializer of response heads (also the master's 408 and 503).
- :mod:`.config`: the settings of all this; :mod:`.head`: the master's end-of-head scan.
- :mod:`.arrival`: what a connection's first bytes mean while they wait in the master (wait,
  hand over, wait for a small body, or answer at once).
"""
