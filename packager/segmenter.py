"""Where segments begin and end: a pure function of the index and the configuration.

Rules (Apple's HLS authoring spec and RFC 8216):

* A segment boundary is a video sync sample; of the keyframes that keep the segment under
  ``target + max_overrun`` the one nearest ``start + target`` is chosen. Only when the next
  keyframe is already past that limit (a GOP longer than the limit) is a longer segment made.
* Times are kept in whole milliseconds, the resolution EXTINF is written with, so the EXTINF
  values add up exactly to the presentation duration (within the 1 ms of rounding its two ends).
* Short last segment policy: when the last segment is shorter than half the target, it is
  merged into the one before if the result still fits the limit; otherwise the boundary before
  it moves back to the keyframe that best balances the two; if neither helps it stays.
* Audio is cut at the audio frame boundary nearest each video boundary, so consecutive segments
  neither overlap nor leave a gap, and the AAC tail past the last video frame (and the priming
  before the first) belongs to the last (first) segment. Audio-only files are cut by time.
* Inside a segment, each keyframe at least ``MIN_FRAGMENT_MS`` after the previous fragment starts
  a new fragment (moof/mdat pair), which is what the I-frame playlist points into.

Segment numbers start at 1 in URLs; ``SegmentPlan`` indexes them from 0.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from backends.errors import BadMedia, SegmentOutOfRange
from packager.index import I64, MediaIndex, Track

MIN_FRAGMENT_MS = 1000


@dataclass(frozen=True)
class SegmenterConfig:
    target: float = 6.0
    max_overrun: float = 0.5

    @property
    def target_ms(self) -> int:
        return round(self.target * 1000)

    @property
    def limit_ms(self) -> int:
        # Strictly below target + overrun: 6.500 s would round up to a TARGETDURATION of 7.
        return round((self.target + self.max_overrun) * 1000) - (1 if self.max_overrun else 0)


@dataclass(frozen=True, eq=False)
class SegmentPlan:
    frag_ms: I64  # fragment boundaries in ms (n_fragments + 1 values)
    seg_frags: I64  # first fragment of each segment (n_segments + 1 values)
    video: I64 | None  # first video sample of each fragment (n_fragments + 1 values)
    audio: I64 | None  # first audio sample of each fragment (n_fragments + 1 values)
    target_duration: int

    @property
    def count(self) -> int:
        return int(self.seg_frags.shape[0]) - 1

    @cached_property
    def times_ms(self) -> I64:
        return self.frag_ms[self.seg_frags]

    @cached_property
    def durations(self) -> list[float]:
        """EXTINF of each segment in seconds (exact to the millisecond)."""
        return [int(d) / 1000 for d in np.diff(self.times_ms)]

    @property
    def duration_ms(self) -> int:
        return int(self.frag_ms[-1] - self.frag_ms[0])

    def check(self, number: int) -> int:
        """Map a 1-based segment number from a URL to an index, or raise SegmentOutOfRange."""
        if not 1 <= number <= self.count:
            raise SegmentOutOfRange(f"segment {number} does not exist (1..{self.count})")
        return number - 1

    def fragments(self, segment: int) -> range:
        return range(int(self.seg_frags[segment]), int(self.seg_frags[segment + 1]))

    def samples(self, bounds: I64 | None, first_frag: int, end_frag: int) -> tuple[int, int]:
        if bounds is None:
            return 0, 0
        return int(bounds[first_frag]), int(bounds[end_frag])


def _ms(values: np.ndarray, timescale: int) -> I64:
    return np.rint(values.astype(np.float64) * 1000.0 / timescale).astype(np.int64)


def _round_half_up(ms: int) -> int:
    return (ms + 500) // 1000


def _cut(times: I64, end: int, config: SegmenterConfig) -> list[int]:
    """Indices into ``times`` (candidate starts, ms) where segments begin; always starts at 0."""
    target, limit = config.target_ms, config.limit_ms
    starts = [0]
    i = 0
    n = times.shape[0]
    while end - times[i] > limit:
        lo = i + 1
        hi = int(np.searchsorted(times, times[i] + limit, side="right"))
        if lo >= n:
            break
        if hi <= lo:
            j = lo  # the next keyframe is already past the limit: unavoidable long segment
        else:
            ideal = times[i] + target
            k = int(np.searchsorted(times[lo:hi], ideal, side="left")) + lo
            options = [c for c in (k - 1, k) if lo <= c < hi]
            j = min(options, key=lambda c: (abs(int(times[c]) - ideal), -c))
        starts.append(j)
        i = j
    return _fix_tail(starts, times, end, config)


def _fix_tail(starts: list[int], times: I64, end: int, config: SegmenterConfig) -> list[int]:
    if len(starts) < 2:
        return starts
    limit = config.limit_ms
    prev, last = starts[-2], starts[-1]
    tail = end - int(times[last])
    if tail * 2 >= config.target_ms:
        return starts
    if end - int(times[prev]) <= limit:
        return starts[:-1]
    best, best_short = last, tail
    for c in range(prev + 1, last):
        head, rest = int(times[c] - times[prev]), end - int(times[c])
        if head <= limit and rest <= limit and min(head, rest) > best_short:
            best, best_short = c, min(head, rest)
    return [*starts[:-1], best]


def _fragment_starts(times: I64, starts: list[int], n: int) -> tuple[list[int], list[int]]:
    """Fragment start indices (into ``times``) and, per segment, its first fragment number."""
    frags: list[int] = []
    seg_frags: list[int] = []
    bounds = [*starts, n]
    for s, e in itertools.pairwise(bounds):
        seg_frags.append(len(frags))
        frags.append(s)
        for c in range(s + 1, e):
            if times[c] - times[frags[-1]] >= MIN_FRAGMENT_MS:
                frags.append(c)
    seg_frags.append(len(frags))
    return frags, seg_frags


def _audio_cuts(audio: Track, instants: np.ndarray) -> I64:
    """Index of the audio frame whose start is nearest each instant (seconds)."""
    scale = audio.info.timescale
    middles = (audio.pts * 2 + audio.durations).astype(np.float64) / (2 * scale)
    return np.searchsorted(middles, instants, side="left").astype(np.int64)


def plan(index: MediaIndex, config: SegmenterConfig) -> SegmentPlan:
    video, audio = index.video, index.audio
    if video is not None:
        return _plan_video(video, audio, config)
    if audio is not None:
        return _plan_audio(audio, config)
    raise BadMedia("nothing to segment: the file has neither video nor audio")


def _plan_video(video: Track, audio: Track | None, config: SegmenterConfig) -> SegmentPlan:
    info = video.info
    syncs = video.sync_indices
    if syncs.shape[0] == 0:
        raise BadMedia("the video track has no keyframes")
    pts = video.pts
    key_pts = pts[syncs].copy()
    # The first segment starts where presentation starts (B-frame reordering, edit lists).
    key_pts[0] = max(int(pts[syncs[0] :].min()), info.presentation_start)
    times = _ms(key_pts, info.timescale)
    end = int(_ms(np.array([info.presentation_end]), info.timescale)[0])
    if np.any(np.diff(times) <= 0) or end <= times[-1]:
        raise BadMedia("video keyframe timestamps are not increasing (open GOP or broken file)")
    starts = _cut(times, end, config)
    frags, seg_frags = _fragment_starts(times, starts, times.shape[0])
    frag_ms = np.append(times[frags], end).astype(np.int64)
    video_bounds = np.append(syncs[frags], video.count).astype(np.int64)
    audio_bounds = None
    if audio is not None:
        instants = key_pts[frags[1:]].astype(np.float64) / info.timescale
        audio_bounds = np.concatenate(([0], _audio_cuts(audio, instants), [audio.count]))
        audio_bounds = np.maximum.accumulate(audio_bounds).astype(np.int64)
    return _finish(frag_ms, np.array(seg_frags, dtype=np.int64), video_bounds, audio_bounds, config)


def _plan_audio(audio: Track, config: SegmenterConfig) -> SegmentPlan:
    info = audio.info
    starts_pts = audio.pts.copy()
    first = int(np.searchsorted(starts_pts + audio.durations, info.presentation_start, "right"))
    first = min(first, audio.count - 1)
    starts_pts[first] = max(int(starts_pts[first]), info.presentation_start)
    times = _ms(starts_pts[first:], info.timescale)
    end = int(_ms(np.array([info.presentation_end]), info.timescale)[0])
    times = np.maximum.accumulate(times)
    cuts = _cut(times, end, config)
    # Every segment is one fragment: an audio frame is always a sync sample.
    frag_ms = np.append(times[cuts], end).astype(np.int64)
    bounds = np.append(np.array(cuts, dtype=np.int64) + first, audio.count).astype(np.int64)
    bounds[0] = 0  # the priming frames before presentation start ride in segment 1
    seg_frags = np.arange(len(cuts) + 1, dtype=np.int64)
    return _finish(frag_ms, seg_frags, None, bounds, config)


def _finish(
    frag_ms: I64,
    seg_frags: I64,
    video: I64 | None,
    audio: I64 | None,
    config: SegmenterConfig,
) -> SegmentPlan:
    seg_ms = np.diff(frag_ms[seg_frags])
    longest = max((_round_half_up(int(d)) for d in seg_ms), default=0)
    target = max(_round_half_up(config.target_ms), longest, 1)
    return SegmentPlan(frag_ms, seg_frags, video, audio, target)
