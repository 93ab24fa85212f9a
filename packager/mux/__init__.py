"""Segment writers: fMP4/CMAF (``fmp4``) and MPEG-TS (``ts``).

Both write every timestamp on one constant timeline: the index's timeline (FFmpeg's convention)
moved later by ``TIMELINE_OFFSET_SECONDS``. With B-frames the first decode time of a file is
negative and AAC priming starts before zero; fMP4's tfdt and TS's PTS/DTS cannot be negative, and
shifting only the segment that needs it makes it overlap its neighbour. A constant shift, the same
for every file, track, segment and rendition, keeps segments continuous and renditions aligned.
"""

from __future__ import annotations

from dataclasses import dataclass

TIMELINE_OFFSET_SECONDS = 10


@dataclass(frozen=True)
class SegmentBody:
    """A generated segment as a list of byte chunks (views into the read buffers where possible)."""

    parts: list[bytes | bytearray | memoryview]
    size: int

    def join(self) -> bytes | bytearray:
        if len(self.parts) == 1 and not isinstance(self.parts[0], memoryview):
            return self.parts[0]
        return b"".join(self.parts)

    def slice(self, start: int, end: int) -> list[bytes | bytearray | memoryview]:
        """The chunks covering bytes [start, end) of the segment, without copying."""
        out: list[bytes | bytearray | memoryview] = []
        pos = 0
        for part in self.parts:
            size = len(part)
            lo, hi = max(start - pos, 0), min(end - pos, size)
            if lo < hi:
                out.append(part if (lo, hi) == (0, size) else memoryview(part)[lo:hi])
            pos += size
            if pos >= end:
                break
        return out
