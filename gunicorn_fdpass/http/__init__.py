"""Sans-IO HTTP/1.1: request rules, body framing, the PROXY protocol and response framing.

Nothing here touches a socket, blocks, or knows Gunicorn: a worker feeds bytes in and sends
the bytes that come out.
"""
