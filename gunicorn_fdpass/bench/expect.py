"""Which response statuses count as success (``--expect-status``), and the failure message.

A benchmark of error pages is not a benchmark of the app: a mistyped ``--path`` or an app
without a ``/`` route answers 404 at full speed. So every scenario reports the statuses it got
on each path it requested, and any status outside the expected set makes it fail, with a short
message naming the path and the status (``7017 x 404 on /``). Pure functions, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

_CLASS_RE = re.compile(r"^([1-5])xx$")
_CODE_RE = re.compile(r"^[1-5][0-9][0-9]$")


@dataclass(frozen=True)
class StatusSet:
    """A set of HTTP statuses given as classes (``2xx``) and single codes (``404``)."""

    classes: frozenset[int] = frozenset({2})
    codes: frozenset[int] = frozenset()

    @classmethod
    def parse(cls, text: str) -> StatusSet:
        """``"2xx"``, ``"200,404"``, ``"2xx,3xx"``; raises ValueError on anything else."""
        classes: set[int] = set()
        codes: set[int] = set()
        for token in (t.strip().lower() for t in text.split(",")):
            if match := _CLASS_RE.match(token):
                classes.add(int(match.group(1)))
            elif _CODE_RE.match(token):
                codes.add(int(token))
            else:
                raise ValueError(f"expected statuses: {token!r} is neither a status code "
                                 "(100-599) nor a class such as 2xx")
        if not classes and not codes:
            raise ValueError("expected statuses: none given")
        return cls(frozenset(classes), frozenset(codes))

    def __contains__(self, status: object) -> bool:
        return isinstance(status, int) and (status // 100 in self.classes
                                            or status in self.codes)

    def __str__(self) -> str:
        return ",".join([f"{c}xx" for c in sorted(self.classes)]
                        + [str(c) for c in sorted(self.codes)])


#: The default: any 2xx answer.
SUCCESS = StatusSet()


def count_expected(statuses: Mapping[int, int], expected: StatusSet) -> int:
    """How many of the responses counted in ``statuses`` have an expected status."""
    return sum(n for status, n in statuses.items() if status in expected)


def unexpected(by_path: Mapping[str, Mapping[int, int]], expected: StatusSet
               ) -> dict[str, dict[int, int]]:
    """The responses outside ``expected``, per path and status (paths without any left out)."""
    found: dict[str, dict[int, int]] = {}
    for path, statuses in by_path.items():
        bad = {s: n for s, n in sorted(statuses.items()) if n and s not in expected}
        if bad:
            found[path] = bad
    return found


def describe(found: Mapping[str, Mapping[int, int]]) -> str:
    """``7017 x 404 on /``; several are joined with ``; ``, the most frequent first."""
    items = [(n, status, path) for path, statuses in found.items()
             for status, n in statuses.items()]
    items.sort(key=lambda item: (-item[0], item[1], item[2]))
    return "; ".join(f"{n} x {status} on {path}" for n, status, path in items)


def hint(paths: Iterable[str], expected: StatusSet) -> str:
    """What to do about unexpected statuses on the user's ``paths``."""
    shown = ", ".join(sorted(set(paths))) or "/"
    return (f"only {expected} counts as success: point --path at a route your app answers "
            f"(requested: {shown}), or accept these statuses with --expect-status "
            f"(e.g. --expect-status {expected},404)")
