"""HTTP Range header parsing (RFC 9110 section 14). Pure and table-tested.

Only single byte ranges are served as 206. A header we do not understand, or one asking for
several ranges, is ignored and the whole representation is sent (200), which RFC 9110 allows;
a syntactically valid range that lies wholly past the end is 416.
"""

from __future__ import annotations

import re

_SINGLE = re.compile(r"bytes=(\d{0,19})-(\d{0,19})")


class RangeNotSatisfiable(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(f"requested range not satisfiable for {size} bytes")
        self.size = size


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """Return (start, end_exclusive) for a satisfiable single range, None to send it all."""
    if not header:
        return None
    match = _SINGLE.fullmatch(header.strip().replace(" ", ""))
    if not match:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:
        suffix = int(last)
        if suffix == 0:
            raise RangeNotSatisfiable(size)
        return max(size - suffix, 0), size
    start = int(first)
    end = int(last) + 1 if last else size
    if last and end <= start:
        return None  # "bytes=9-3" is invalid syntax: ignore it
    if start >= size:
        raise RangeNotSatisfiable(size)
    return start, min(end, size)
