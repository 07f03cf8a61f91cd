"""The bounded memo tables' one rule."""

from __future__ import annotations

from gunicorn_fdpass.http.memo import remember


def test_remember_keeps_and_returns_the_value() -> None:
    table: dict[str, int] = {}
    assert remember(table, "a", 1, limit=3) == 1
    assert table == {"a": 1}


def test_a_full_table_is_emptied_before_the_next_entry() -> None:
    table: dict[int, int] = {}
    for n in range(3):
        remember(table, n, n, limit=3)
    assert len(table) == 3
    remember(table, 99, 99, limit=3)
    assert table == {99: 99}  # never more than the limit, whatever the keys
