"""Where a request head ends, as the master and the worker both need to know. Pure."""

from __future__ import annotations

import re
from typing import Final

#: A blank line ends a request head (RFC 9112 section 2.1); a bare LF line ending is
#: recognised too, so that the HTTP parser, not this scan, decides whether to refuse it.
END_OF_HEAD: Final = re.compile(rb"\n\r?\n")


def head_complete(data: bytes, limit: int | None = None) -> bool:
    """True if ``data`` holds a whole request head (within its first ``limit`` bytes)."""
    return END_OF_HEAD.search(data, 0, len(data) if limit is None else limit) is not None
