"""Which bytes of the source a segment needs, and views into them once read.

A segment's samples are a few hundred byte ranges, usually adjacent in the file because the
source interleaves audio and video chunks. ``read_ranges`` merges them into the fewest reads
(ranges closer than ``gap`` bytes are read as one); ``SampleSource`` then hands out zero-copy
views of each sample or run of samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from backends.errors import BadMedia
from packager.index import I64, MediaIndex, Track
from packager.segmenter import SegmentPlan

Range = tuple[int, int]


@dataclass(frozen=True)
class TrackSlice:
    """The samples [first, end) of one track that one fragment carries."""

    track: Track
    first: int
    end: int

    @property
    def count(self) -> int:
        return self.end - self.first

    @property
    def nbytes(self) -> int:
        return int(self.track.size[self.first : self.end].sum(dtype=np.int64))

    def runs(self) -> list[Range]:
        """Byte ranges of the samples, in decode order, merging samples that touch."""
        if self.end <= self.first:
            return []
        offsets = self.track.offset[self.first : self.end]
        ends = offsets + self.track.size[self.first : self.end].astype(np.int64)
        breaks = np.flatnonzero(offsets[1:] != ends[:-1]) + 1
        starts = np.concatenate(([0], breaks))
        stops = np.concatenate((breaks, [offsets.shape[0]]))
        return list(zip(offsets[starts].tolist(), ends[stops - 1].tolist(), strict=True))


def fragment_slices(index: MediaIndex, plan: SegmentPlan, fragment: int) -> list[TrackSlice]:
    """Video first, then audio: the order tracks take in init segments and moofs."""
    out = []
    for track, bounds in ((index.video, plan.video), (index.audio, plan.audio)):
        if track is not None and bounds is not None:
            out.append(TrackSlice(track, int(bounds[fragment]), int(bounds[fragment + 1])))
    return out


def coalesce(ranges: Sequence[Range], gap: int) -> list[Range]:
    merged: list[list[int]] = []
    for start, end in sorted(ranges):
        if merged and start - merged[-1][1] <= gap:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(a, b) for a, b in merged]


def segment_ranges(index: MediaIndex, plan: SegmentPlan, segment: int, gap: int) -> list[Range]:
    """The coalesced byte ranges holding every sample of ``segment``."""
    runs: list[Range] = []
    for fragment in plan.fragments(segment):
        for piece in fragment_slices(index, plan, fragment):
            runs.extend(piece.runs())
    return coalesce(runs, gap)


class SampleSource:
    """Read buffers for coalesced ranges, answering views of any byte range inside them."""

    def __init__(self, ranges: Sequence[Range], buffers: Sequence[bytes]) -> None:
        self._starts: I64 = np.array([r[0] for r in ranges], dtype=np.int64)
        self._ranges = list(ranges)
        self._views = [memoryview(b) for b in buffers]
        for (start, end), view in zip(ranges, self._views, strict=True):
            if len(view) != end - start:
                raise BadMedia(
                    f"the file ended early: wanted bytes {start}-{end}, got {len(view)} bytes"
                )

    def view(self, start: int, end: int) -> memoryview:
        i = int(np.searchsorted(self._starts, start, side="right")) - 1
        if i < 0 or end > self._ranges[i][1]:
            raise BadMedia(f"bytes {start}-{end} were not read")  # a planning bug, not user input
        base = self._ranges[i][0]
        return self._views[i][start - base : end - base]
