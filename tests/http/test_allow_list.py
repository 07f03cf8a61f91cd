"""AddressAllowList: decisions are the same whether or not they were remembered."""

from __future__ import annotations

from gunicorn_fdpass.http import request_rules
from gunicorn_fdpass.http.request_rules import AddressAllowList


def test_repeated_decisions_are_stable() -> None:
    allow = AddressAllowList(["10.0.0.0/8", "::1"])
    for _ in range(3):
        assert allow.allows(("10.1.2.3", 5000))
        assert allow.allows(("::1", 5000, 0, 0))
        assert not allow.allows(("192.168.1.1", 5000))
        assert not allow.allows(("not an address", 1))
        assert not allow.allows(())
        assert allow.allows("/run/app.sock")  # a UNIX socket peer


def test_memory_is_bounded() -> None:
    allow = AddressAllowList(["10.0.0.0/8"])
    for i in range(request_rules._MAX_REMEMBERED_PEERS * 2):
        assert allow.allows((f"10.0.{i // 256 % 256}.{i % 256}", 1)) is True
        assert len(allow._decisions) <= request_rules._MAX_REMEMBERED_PEERS
    assert not allow.allows(("11.0.0.1", 1))
