"""Which bytes of the source a segment needs, and how they are read.

A segment's samples are a few hundred byte runs, usually close together because the source
interleaves audio and video chunks. Two ways to read them, both in as few requests as the gap
allows (runs closer than ``gap`` bytes are read as one):

* ``scatter_reads`` plans reads that drop every run straight into its place in the output
  (fMP4: the segment is the sample bytes in a new order plus small headers);
* ``segment_ranges`` + ``SampleSource`` read the covering ranges as buffers and hand out
  zero-copy views of each sample (TS, which rewrites every sample).
"""

from __future__ import annotations

import bisect
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

    def runs(self) -> tuple[I64, I64]:
        """(starts, ends) of the samples' byte ranges in decode order, merging samples that touch.

        Real files interleave audio and video every frame or two, so a 6 s segment has hundreds
        of runs: they stay numpy arrays, never a Python object per run until the copy itself.
        """
        offsets = self.track.offset[self.first : self.end]
        ends = offsets + self.track.size[self.first : self.end].astype(np.int64)
        if offsets.shape[0] == 0:
            return offsets, ends
        breaks = np.flatnonzero(offsets[1:] != ends[:-1]) + 1
        starts = np.concatenate(([0], breaks))
        stops = np.concatenate((breaks, [offsets.shape[0]]))
        return offsets[starts], ends[stops - 1]


def fragment_slices(index: MediaIndex, plan: SegmentPlan, fragment: int) -> list[TrackSlice]:
    """Video first, then audio: the order tracks take in init segments and moofs."""
    out = []
    for track, bounds in ((index.video, plan.video), (index.audio, plan.audio)):
        if track is not None and bounds is not None:
            out.append(TrackSlice(track, int(bounds[fragment]), int(bounds[fragment + 1])))
    return out


def widened_gap(holes: I64, wanted: int, gap: int, overfetch: float) -> int:
    """The largest hole to read through: every hole up to ``gap``, then the smallest of the
    others for as long as all the hole bytes read stay within ``overfetch`` x ``wanted``.

    A remote store charges a round trip per request; a few hundred kilobytes of the other
    track's samples between a segment's last runs cost less than another request.
    """
    if overfetch <= 0 or holes.shape[0] == 0:
        return gap
    positive = np.sort(holes[holes > 0])
    spent = np.cumsum(positive)
    allowed = int(np.searchsorted(spent, overfetch * wanted, side="right"))
    return max(gap, int(positive[allowed - 1])) if allowed else gap


def coalesce(starts: I64, ends: I64, gap: int, overfetch: float = 0.0) -> list[Range]:
    """Merge byte ranges (in any order) whose distance is at most ``gap`` (widened, see
    ``widened_gap``, when ``overfetch`` allows)."""
    if starts.shape[0] == 0:
        return []
    order = np.argsort(starts, kind="stable")
    wanted = int((ends - starts).sum())
    starts, ends = starts[order], np.maximum.accumulate(ends[order])
    holes = starts[1:] - ends[:-1]
    gap = widened_gap(holes, wanted, gap, overfetch)
    # A new read begins where a range starts more than ``gap`` past everything before it.
    new = np.flatnonzero(holes > gap) + 1
    first = np.concatenate(([0], new))
    last = np.concatenate((new - 1, [starts.shape[0] - 1]))
    return list(zip(starts[first].tolist(), ends[last].tolist(), strict=True))


def segment_runs(index: MediaIndex, plan: SegmentPlan, segment: int) -> tuple[I64, I64]:
    """Byte ranges of every sample of ``segment`` (all fragments, both tracks)."""
    pieces = [
        piece.runs()
        for fragment in plan.fragments(segment)
        for piece in fragment_slices(index, plan, fragment)
    ]
    if not pieces:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate([p[0] for p in pieces]), np.concatenate([p[1] for p in pieces])


def segment_ranges(
    index: MediaIndex, plan: SegmentPlan, segment: int, gap: int, overfetch: float = 0.0
) -> list[Range]:
    """The coalesced byte ranges holding every sample of ``segment``."""
    return coalesce(*segment_runs(index, plan, segment), gap, overfetch)


class SampleSource:
    """Read buffers for coalesced ranges, answering views of any byte range inside them."""

    def __init__(self, ranges: Sequence[Range], buffers: Sequence[bytes]) -> None:
        self._starts: I64 = np.array([r[0] for r in ranges], dtype=np.int64)
        self._ends: I64 = np.array([r[1] for r in ranges], dtype=np.int64)
        self._start_list = self._starts.tolist()
        self._end_list = self._ends.tolist()
        self._views = [memoryview(b) for b in buffers]
        for (start, end), view in zip(ranges, self._views, strict=True):
            if len(view) != end - start:
                raise BadMedia(
                    f"the file ended early: wanted bytes {start}-{end}, got {len(view)} bytes"
                )

    def _locate(self, starts: I64, ends: I64) -> I64:
        which = np.searchsorted(self._starts, starts, side="right") - 1
        if starts.shape[0] and (
            int(which.min()) < 0 or bool(np.any(ends > self._ends[np.maximum(which, 0)]))
        ):
            raise BadMedia("sample bytes were not read")  # a planning bug, not user input
        return which

    def view(self, start: int, end: int) -> memoryview:
        # Called once per sample by the TS writer: plain bisect, no numpy temporaries.
        i = bisect.bisect_right(self._start_list, start) - 1
        if i < 0 or end > self._end_list[i]:
            raise BadMedia(f"bytes {start}-{end} were not read")  # a planning bug, not user input
        base = self._start_list[i]
        return self._views[i][start - base : end - base]

    def views(self, starts: I64, ends: I64) -> list[memoryview]:
        """Views of many byte ranges at once: one vectorised lookup, then one slice each."""
        which = self._locate(starts, ends)
        bases = self._starts[which]
        views = self._views
        lows, highs = (starts - bases).tolist(), (ends - bases).tolist()
        return [views[i][lo:hi] for i, lo, hi in zip(which.tolist(), lows, highs, strict=True)]


def scatter_reads(
    starts: I64, ends: I64, targets: I64, gap: int, out: memoryview, overfetch: float = 0.0
) -> list[tuple[int, list[memoryview]]]:
    """Reads that put each run of bytes [starts[i], ends[i]) of the file at ``out[targets[i]:]``.

    Runs are grouped into as few reads as the gap allows; the bytes between runs of one read go
    to a scratch buffer. Overlapping runs (a hostile index may alias samples) start a new read.
    The grouping is vectorised; the loop left only slices buffers (hundreds per segment).
    """
    if starts.shape[0] == 0:
        return []
    order = np.argsort(starts, kind="stable")
    starts, ends, targets = starts[order], ends[order], targets[order]
    holes = starts - np.concatenate((starts[:1], ends[:-1]))
    gap = widened_gap(holes, int((ends - starts).sum()), gap, overfetch)
    new_read = (holes < 0) | (holes > gap)
    new_read[0] = True
    scratch = memoryview(bytearray(int(holes[~new_read].max(initial=0))))
    reads: list[tuple[int, list[memoryview]]] = []
    buffers: list[memoryview] = []
    lengths = (ends - starts).tolist()
    for start, length, target, hole, new in zip(
        starts.tolist(), lengths, targets.tolist(), holes.tolist(), new_read.tolist(), strict=True
    ):
        if new:
            buffers = []
            reads.append((start, buffers))
        elif hole:
            buffers.append(scratch[:hole])
        buffers.append(out[target : target + length])
    return reads
