"""The project's own errors: every error this package raises on purpose derives from
:class:`FdpassError`.

Defined here: the link's errors (the channel module translates OS errors into these once, so
the rest of the code reasons about *who* ended a conversation, us or the peer, instead of
about errno values) and configuration errors. Defined beside the code that raises them:
``http.request_rules.Rejected`` (a request refused, with its HTTP status),
``http.response.Abort`` (a response that cannot be completed),
``worker.transport.ClientGone`` (the client cannot be sent to any more),
``worker.api.RequestBodyError`` (reading ``wsgi.input`` failed; also an ``OSError``) and
``master.states.TransitionError`` (a bug in the master's bookkeeping).
"""

from __future__ import annotations


class FdpassError(Exception):
    """Base class of every error this package raises on purpose."""


class ProtocolError(FdpassError):
    """A master<->worker message could not be encoded or decoded."""


class ChannelClosed(FdpassError):
    """The channel was closed by this side; using it again is a bug in the caller."""


class PeerGone(FdpassError):
    """The other end of the channel died or closed it (EOF, ECONNRESET, EPIPE)."""


class ConfigurationError(RuntimeError, FdpassError):
    """A Gunicorn setting cannot work with this worker.

    It derives from RuntimeError because Gunicorn's application runner prints a RuntimeError
    raised at startup as ``Error: <message>`` and exits with status 1, which is exactly the
    clear startup failure a user needs.
    """
