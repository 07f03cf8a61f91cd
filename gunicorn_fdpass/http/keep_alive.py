"""The one keep-alive decision: after a request, keep serving the connection, hand it back to
the master, or close it. Pure.

Everything that bears on it is gathered in one :class:`Facts` record as the exchange goes on
(what the request said, what the response turned out to be, whether the exchange completed),
and :func:`decide` turns that, the settings (:class:`Policy`) and the worker's state into a
:class:`Next`. The response head asks the same function whether it must say
``Connection: close`` (:func:`closes`), so the header and what happens next never disagree.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

__all__ = [
    "After",
    "Facts",
    "Next",
    "Policy",
    "closes",
    "connection_tokens",
    "decide",
    "request_facts",
]


class After(Enum):
    """What the worker wants once the current request is answered (``request_started``)."""

    #: Serve further requests on this connection as usual.
    CONTINUE = "continue"
    #: This worker serves no further request (``max_requests`` reached): finish this response
    #: with keep-alive intact, then hand the connection back, so the master keeps it for
    #: another worker.
    HAND_BACK = "hand back"
    #: The server is stopping: answer with ``Connection: close`` and close.
    CLOSE = "close"


class Next(Enum):
    """What happens to the connection after the current exchange."""

    KEEP = "keep serving"  # read the next request in this worker
    HAND_BACK = "hand back"  # idle (or behind others): back to the master's queue
    CLOSE = "close"


@dataclass(frozen=True, slots=True)
class Policy:
    """The settings part, computed once per worker."""

    keepalive: bool  # may a connection carry more than one request at all?
    parkable: bool  # may it go back to the master? (never under TLS)
    burst: int  # requests served back to back before handing it back
    in_order: bool = True  # hand back while earlier work waits (first come, first served)


@dataclass(slots=True)
class Facts:
    """What is known about one exchange; the response side fills in its fields as it goes."""

    #: The request forbids another one: ``Connection: close``, or HTTP/1.0 without
    #: ``keep-alive``.
    client_close: bool
    #: The request's framing cannot be trusted to end where it says (CONNECT, a transfer
    #: coding before chunked).
    framing_close: bool
    #: An HTTP/1.0 client asked for keep-alive (the response must then say so).
    keep_alive_10: bool = False
    #: The application's ``Connection: close``.
    app_close: bool = False
    #: The response body ends with the connection (HTTP/1.0, no length).
    close_delimited: bool = False
    #: What is left of the request body rules out another request (100-continue never
    #: answered, or too much to drain).
    unread_body: bool = False
    #: The exchange did not complete cleanly (response cut short or overrun, a failed send,
    #: a failed body read or drain).
    broken: bool = False


def connection_tokens(headers: Iterable[tuple[str, str]]) -> set[str]:
    """The options of a request's ``Connection`` field(s), lower case (names upper case, as
    parsed)."""
    return {
        token.strip(" \t").lower()
        for name, value in headers
        if name == "CONNECTION"
        for token in value.split(",")
    }


def request_facts(version: tuple[int, int], tokens: set[str], must_close: bool) -> Facts:
    """The request side's facts from its version, ``Connection`` options (lower case) and
    framing."""
    http10 = version < (1, 1)
    keep_alive_10 = http10 and "keep-alive" in tokens and "close" not in tokens
    return Facts(
        client_close="close" in tokens or (http10 and not keep_alive_10),
        framing_close=must_close,
        keep_alive_10=keep_alive_10,
    )


def closes(facts: Facts, policy: Policy, after: After) -> bool:
    """True if the connection ends after this exchange whatever the worker's state."""
    return (
        not policy.keepalive
        or after is After.CLOSE
        or facts.client_close
        or facts.framing_close
        or facts.app_close
        or facts.close_delimited
        or facts.unread_body
        or facts.broken
    )


def decide(
    facts: Facts, policy: Policy, after: After, *, served: int, others_waiting: bool
) -> Next:
    """The connection's fate after an exchange.

    ``served``: requests this worker served on the connection, this one included.
    ``others_waiting``: work that arrived earlier waits in the master; first come, first
    served means going back behind it rather than on to this connection's next request.
    """
    if closes(facts, policy, after):
        return Next.CLOSE
    if after is After.HAND_BACK or served >= policy.burst:
        # A connection that cannot be parked cannot wait in the master's queue either.
        return Next.HAND_BACK if policy.parkable else Next.CLOSE
    if others_waiting and policy.parkable and policy.in_order:
        # Only a parkable connection can queue behind them; closing a TLS connection
        # whenever others wait would cost its client a new handshake for every request.
        return Next.HAND_BACK
    return Next.KEEP
