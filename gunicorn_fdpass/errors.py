"""The project's own errors.

The channel module translates OS errors into these once, so the rest of the code reasons about
*who* ended a conversation (us or the peer) instead of about errno values.
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
