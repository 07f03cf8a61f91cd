"""The keep-alive decision (gunicorn_fdpass.http.keep_alive), as a table: every input that can
end, keep or hand back a connection, alone."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from gunicorn_fdpass.http.keep_alive import (
    After,
    Facts,
    Next,
    Policy,
    closes,
    decide,
    request_facts,
)

KEEP, HAND_BACK, CLOSE = Next.KEEP, Next.HAND_BACK, Next.CLOSE
POLICY = Policy(keepalive=True, parkable=True, burst=4)
CLEAN = Facts(client_close=False, framing_close=False)


@pytest.mark.parametrize(
    ("facts", "policy", "after", "served", "waiting", "expected"),
    [
        # A clean HTTP/1.1 exchange keeps the connection in this worker.
        ({}, {}, After.CONTINUE, 1, False, KEEP),
        # Each reason to close, alone.
        ({"client_close": True}, {}, After.CONTINUE, 1, False, CLOSE),
        ({"framing_close": True}, {}, After.CONTINUE, 1, False, CLOSE),
        ({"app_close": True}, {}, After.CONTINUE, 1, False, CLOSE),
        ({"close_delimited": True}, {}, After.CONTINUE, 1, False, CLOSE),
        ({"unread_body": True}, {}, After.CONTINUE, 1, False, CLOSE),
        ({"broken": True}, {}, After.CONTINUE, 1, False, CLOSE),
        ({}, {"keepalive": False}, After.CONTINUE, 1, False, CLOSE),
        ({}, {}, After.CLOSE, 1, False, CLOSE),
        # Closing wins over every reason to hand back.
        ({"client_close": True}, {}, After.HAND_BACK, 4, True, CLOSE),
        ({}, {}, After.CLOSE, 4, True, CLOSE),
        # Each reason to hand back, alone: max_requests, the burst used up, earlier work
        # waiting in the master (first come, first served: issue 15).
        ({}, {}, After.HAND_BACK, 1, False, HAND_BACK),
        ({}, {}, After.CONTINUE, 4, False, HAND_BACK),
        ({}, {}, After.CONTINUE, 3, False, KEEP),
        ({}, {}, After.CONTINUE, 1, True, HAND_BACK),
        # A connection that cannot be parked (TLS) closes instead of going back.
        ({}, {"parkable": False}, After.HAND_BACK, 1, False, CLOSE),
        ({}, {"parkable": False}, After.CONTINUE, 1, True, KEEP),  # TLS: no handshake per request
        ({}, {"in_order": False}, After.CONTINUE, 1, True, KEEP),  # FDPASS_IN_ORDER=0
        ({}, {"in_order": False}, After.CONTINUE, 4, True, HAND_BACK),  # the burst still ends
        ({}, {"parkable": False}, After.CONTINUE, 4, False, CLOSE),
        ({}, {"parkable": False}, After.CONTINUE, 1, False, KEEP),
        # HTTP/1.0 keep-alive is kept like HTTP/1.1.
        ({"keep_alive_10": True}, {}, After.CONTINUE, 1, False, KEEP),
    ],
)
def test_decision_table(
    facts: dict[str, Any],
    policy: dict[str, Any],
    after: After,
    served: int,
    waiting: bool,
    expected: Next,
) -> None:
    got = decide(replace(CLEAN, **facts), replace(POLICY, **policy), after,
                 served=served, others_waiting=waiting)
    assert got is expected
    # The response head says "Connection: close" exactly when the decision is to close for
    # reasons that do not depend on the worker's queue (the burst and waiting work don't).
    if served == 1 and not waiting and after is not After.HAND_BACK:
        assert closes(replace(CLEAN, **facts), replace(POLICY, **policy), after) == (
            expected is CLOSE
        )


@pytest.mark.parametrize(
    ("version", "tokens", "client_close", "keep_alive_10"),
    [
        ((1, 1), set(), False, False),
        ((1, 1), {"close"}, True, False),
        ((1, 1), {"keep-alive", "close"}, True, False),
        ((1, 0), set(), True, False),
        ((1, 0), {"keep-alive"}, False, True),
        ((1, 0), {"keep-alive", "close"}, True, False),
    ],
)
def test_request_facts(
    version: tuple[int, int], tokens: set[str], client_close: bool, keep_alive_10: bool
) -> None:
    facts = request_facts(version, tokens, must_close=False)
    assert (facts.client_close, facts.keep_alive_10) == (client_close, keep_alive_10)
    assert request_facts(version, tokens, must_close=True).framing_close
