"""Bounded memo tables: what the request and response paths remember between requests.

A worker sees the same few header names, statuses, header sets and hosts again and again, so
their checks and layouts are kept in plain dicts and looked up. The keys come from clients and
applications, so every table is bounded: when one is full it is emptied and starts again,
which costs a few misses, never memory. :func:`remember` is that rule, in one place.
"""

from __future__ import annotations

from typing import TypeVar

__all__ = ["remember"]

K = TypeVar("K")
V = TypeVar("V")


def remember(table: dict[K, V], key: K, value: V, limit: int) -> V:
    """Keep ``value`` under ``key`` in ``table``, emptied first if it holds ``limit``
    entries; return ``value``."""
    if len(table) >= limit:
        table.clear()
    table[key] = value
    return value
