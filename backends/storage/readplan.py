"""Turn a segment's reads into object-store requests: big ranges split, each part concurrent.

The packager already coalesces sample runs closer than ``vod.read_coalesce_gap`` into one read
(``packager.samples``); what is left here is the other half of the plan: a read larger than
``max_bytes`` becomes several ranged GETs of at most that size, fetched side by side, so one
slow large response does not serialise a segment and no response needs an unbounded buffer.
Pure functions, tested from tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from backends.storage.base import ScatterRead


@dataclass(frozen=True, slots=True)
class Part:
    """One ranged request: [start, end) of the object and the buffers its bytes fill."""

    start: int
    end: int
    buffers: tuple[memoryview, ...]


def split_ranges(ranges: Sequence[tuple[int, int]], max_bytes: int) -> list[tuple[int, int]]:
    """Each [start, end) cut into consecutive pieces of at most ``max_bytes``."""
    if max_bytes <= 0:
        raise ValueError("max_bytes must be positive")
    out = []
    for start, end in ranges:
        for piece in range(start, end, max_bytes):
            out.append((piece, min(end, piece + max_bytes)))
    return out


def split_reads(reads: Sequence[ScatterRead], max_bytes: int) -> list[Part]:
    """The requests that fill every buffer of ``reads``, none longer than ``max_bytes``.

    A buffer that straddles a cut is sliced (zero-copy views) between the two requests.
    """
    if max_bytes <= 0:
        raise ValueError("max_bytes must be positive")
    parts: list[Part] = []
    for offset, buffers in reads:
        start = offset
        pending: list[memoryview] = []
        size = 0
        for buffer in buffers:
            view = buffer
            while len(view):
                take = min(len(view), max_bytes - size)
                pending.append(view[:take])
                size += take
                view = view[take:]
                if size == max_bytes:
                    parts.append(Part(start, start + size, tuple(pending)))
                    start += size
                    pending, size = [], 0
        if size:
            parts.append(Part(start, start + size, tuple(pending)))
    return parts
