"""What a simulated HLS player decides, as pure functions: which variant to fetch, how full its
buffer is, when it stalls, how long to wait before the next segment, and which video a CDN edge
asks for. No Locust here, so the rules are tested from tables (tests/test_loadtests.py)."""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass, field

import m3u8

# An ABR player keeps a margin below its measured throughput (hls.js uses 0.7-0.9).
SAFETY = 0.8
# The weight of the newest throughput sample in the running estimate.
EWMA_NEW = 0.3


@dataclass(frozen=True)
class Variant:
    bandwidth: int  # bits/s, as the master playlist announces
    uri: str  # absolute


@dataclass(frozen=True)
class Media:
    init: str | None  # the EXT-X-MAP URI (fMP4), absolute
    segments: tuple[tuple[float, str], ...]  # (duration in s, absolute URI)

    @property
    def duration(self) -> float:
        return sum(d for d, _ in self.segments)


def variants(text: str, url: str) -> list[Variant]:
    """The master playlist's variants, lowest bandwidth first."""
    playlist = m3u8.loads(text, uri=url)
    found = [
        Variant(int(p.stream_info.bandwidth or 0), str(p.absolute_uri)) for p in playlist.playlists
    ]
    return sorted(found, key=lambda v: v.bandwidth)


def media(text: str, url: str) -> Media:
    playlist = m3u8.loads(text, uri=url)
    maps = [s.init_section for s in playlist.segments if s.init_section is not None]
    init = str(maps[0].absolute_uri) if maps else None
    return Media(init, tuple((float(s.duration), str(s.absolute_uri)) for s in playlist.segments))


def choose(options: list[Variant], throughput: float | None, safety: float = SAFETY) -> int:
    """The index of the variant to fetch: the best that fits ``safety`` of the measured
    throughput (bits/s), the lowest while nothing was measured or nothing fits."""
    if throughput is None or not options:
        return 0
    fits = [i for i, v in enumerate(options) if v.bandwidth <= throughput * safety]
    return fits[-1] if fits else 0


def estimate(previous: float | None, sample: float) -> float:
    """The running throughput estimate after one more download (bits/s)."""
    return sample if previous is None else previous + EWMA_NEW * (sample - previous)


@dataclass
class Playback:
    """The buffer of one playing viewer, in media seconds, on a clock ``speed`` times faster
    than real time (a load test may compress an hour of viewing into minutes)."""

    speed: float = 1.0
    target: float = 30.0  # the buffer a player keeps ahead; it waits above it
    buffer: float = 0.0
    clock: float | None = None  # wall time of the last update; None: not playing yet
    stalls: list[float] = field(default_factory=list)  # media seconds each stall lasted

    def _advance(self, now: float) -> None:
        if self.clock is None:
            return
        played = (now - self.clock) * self.speed
        if played > self.buffer:
            self.stalls.append(played - self.buffer)
            self.buffer = 0.0
        else:
            self.buffer -= played
        self.clock = now

    def add(self, seconds: float, now: float) -> float:
        """A segment of ``seconds`` arrived at ``now``; the stall it ended, if any (s)."""
        before = len(self.stalls)
        self._advance(now)
        self.buffer += seconds
        if self.clock is None:
            self.clock = now  # playback starts with the first segment
        return self.stalls[-1] if len(self.stalls) > before else 0.0

    def wait(self, now: float) -> float:
        """Wall seconds to wait before fetching the next segment (0: fetch at once)."""
        self._advance(now)
        return max(0.0, (self.buffer - self.target) / self.speed)

    def seek(self) -> None:
        """The viewer jumps: the buffer is thrown away and playback starts again."""
        self.buffer = 0.0
        self.clock = None


class Zipf:
    """Ranks 0..n-1 drawn with probability proportional to 1/(rank+1)^s: a few videos get
    most of the views, as on a real catalogue."""

    def __init__(self, n: int, s: float = 1.0) -> None:
        if n < 1:
            raise ValueError("a Zipf draw needs at least one item")
        weights = [1.0 / (rank + 1) ** s for rank in range(n)]
        self.cumulative = list(itertools.accumulate(weights))

    def rank(self, u: float) -> int:
        """The rank for a uniform draw ``u`` in [0, 1)."""
        return min(
            bisect.bisect_right(self.cumulative, u * self.cumulative[-1]), len(self.cumulative) - 1
        )
