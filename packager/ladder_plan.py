"""The pure parts of the transcode ladder (see ``packager.ladder``): which rungs a source
gets and at what sizes, the constant output frame rate, the frame slots of variable-rate
sources, audio placed on the video's timeline, and the RFC 6381 codec string."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import msgspec
import numpy as np

from backends.errors import BadMedia


@dataclass(frozen=True)
class Rung:
    name: str  # file and rendition name, e.g. "720p"
    height: int  # short side of the displayed picture
    video_bitrate: int  # bits/s


DEFAULT_RUNGS = (
    Rung("1080p", 1080, 5_000_000),
    Rung("720p", 720, 3_000_000),
    Rung("480p", 480, 1_500_000),
    Rung("360p", 360, 800_000),
)


@dataclass(frozen=True)
class LadderConfig:
    rungs: tuple[Rung, ...] = DEFAULT_RUNGS
    preset: str = "veryfast"  # libx264 preset
    gop_seconds: float = 2.0
    audio_bitrate: int = 128_000
    audio_rate: int = 48_000
    max_fps: int = 60


@dataclass(frozen=True)
class PlannedRung:
    name: str
    width: int
    height: int
    video_bitrate: int


class RungOutput(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    path: str
    width: int
    height: int
    bandwidth: int  # bits/s: the file's size over its duration
    duration: float  # seconds of video
    frame_rate: float
    codecs: str  # RFC 6381, e.g. "avc1.64001f,mp4a.40.2"


# Rates a camera or an editor produces; an average within 1% of one of them is that rate.
STANDARD_RATES = (
    Fraction(24000, 1001),
    Fraction(24),
    Fraction(25),
    Fraction(30000, 1001),
    Fraction(30),
    Fraction(48),
    Fraction(50),
    Fraction(60000, 1001),
    Fraction(60),
)
MIN_BITRATE = 50_000  # floor for the one rung of a tiny source


def _even(value: float, limit: int) -> int:
    """``value`` rounded to the nearest even integer, at least 2, at most ``limit`` (made even)."""
    return max(2, min(2 * math.floor(value / 2 + 0.5), limit - limit % 2))


def display_size(
    width: int, height: int, rotation: int = 0, sample_aspect: Fraction | None = None
) -> tuple[int, int]:
    """The picture as shown: non-square pixels made square (wider or narrower), then turned."""
    if sample_aspect is not None and sample_aspect > 0 and sample_aspect != 1:
        width = max(1, round(width * sample_aspect))
    if rotation % 180 == 90:
        width, height = height, width
    return width, height


def plan(
    width: int,
    height: int,
    rotation: int = 0,
    rungs: tuple[Rung, ...] = DEFAULT_RUNGS,
    sample_aspect: Fraction | None = None,
) -> list[PlannedRung]:
    """The rungs for a source of ``width`` x ``height`` coded pixels shown turned by
    ``rotation`` degrees: output sizes are of the upright picture."""
    if width <= 0 or height <= 0 or not rungs:
        raise BadMedia(f"the video is {width}x{height}: no picture to transcode")
    shown_w, shown_h = display_size(width, height, rotation, sample_aspect)
    short, long_side = min(shown_w, shown_h), max(shown_w, shown_h)

    def sized(name: str, side: int, bitrate: int) -> PlannedRung:
        other = _even(long_side * side / short, long_side)
        w, h = (other, side) if shown_w >= shown_h else (side, other)
        return PlannedRung(name, w, h, bitrate)

    chosen = [
        sized(r.name, _even(r.height, short), r.video_bitrate) for r in rungs if r.height <= short
    ]
    if chosen:
        return chosen
    smallest = min(rungs, key=lambda r: r.height)
    side = _even(short, short)
    bitrate = max(MIN_BITRATE, round(smallest.video_bitrate * (side / smallest.height) ** 2))
    return [sized(f"{side}p", side, bitrate)]


def output_rate(average: Fraction | None, max_fps: int = 60) -> Fraction:
    """The constant output rate for a source whose average rate is ``average`` (None: unknown)."""
    if average is None or average <= 0:
        return min(Fraction(30), Fraction(max_fps))
    rate = min(Fraction(average), Fraction(max_fps))
    nearest = min(STANDARD_RATES, key=lambda standard: abs(rate - standard))
    if abs(rate - nearest) <= nearest / 100:
        return nearest
    return Fraction(max(1, math.floor(rate + Fraction(1, 2))))


class FrameClock:
    """Constant-rate output slots for frames with variable presentation times.

    ``push(t)`` for each frame in presentation order answers how many slots the *previous* frame
    fills (0: it is dropped; more than 1: repeated); ``finish(end)`` answers the last frame's.
    A frame at time t is due at slot round((t - t0) * rate), t0 being the first frame's time.
    """

    def __init__(self, rate: Fraction) -> None:
        self.rate = rate
        self.start: Fraction | None = None
        self.next = 0  # the slot the pending (previous) frame would fill first

    def slot(self, t: Fraction) -> int:
        assert self.start is not None
        return math.floor((t - self.start) * self.rate + Fraction(1, 2))

    def push(self, t: Fraction) -> int:
        if self.start is None:
            self.start = t
            return 0
        due = self.slot(t)
        if due <= self.next:
            return 0  # the new frame takes the pending frame's slot
        count, self.next = due - self.next, due
        return count

    def finish(self, end: Fraction) -> int:
        """Slots of the last frame, shown until ``end`` (a lone frame at least once)."""
        if self.start is None:
            return 0
        count = max(1 if self.next == 0 else 0, self.slot(end) - self.next)
        self.next += count
        return count


class SampleQueue:
    """Planar audio placed on the output timeline and taken in encoder-sized frames.

    ``put(samples, at)``: ``at`` is where the samples belong, in samples from the video's first
    frame (None: right after the previous ones). The first put is placed exactly (earlier audio
    is cut, a late start is preceded by silence); later ones only when they are off by more
    than ``tolerance`` (holes become silence, overlaps are cut), so timestamp jitter is ignored.
    """

    def __init__(self, channels: int, frame_size: int, tolerance: int) -> None:
        self.channels = channels
        self.frame_size = frame_size
        self.tolerance = tolerance
        self.position = 0  # timeline samples put so far (queued or taken)
        self.taken = 0
        self._parts: list[np.ndarray] = []
        self._queued = 0
        self._placed = False

    def put(self, samples: np.ndarray, at: int | None) -> None:
        if at is not None:
            gap = at - self.position
            if gap > (self.tolerance if self._placed else 0):
                self._append(np.zeros((self.channels, gap), dtype=np.float32))
            elif gap < -(self.tolerance if self._placed else 0):
                samples = samples[:, -gap:]
        self._placed = True
        if samples.shape[1]:
            self._append(samples)

    def _append(self, samples: np.ndarray) -> None:
        self._parts.append(samples)
        self._queued += samples.shape[1]
        self.position += samples.shape[1]

    def take(self, until: int) -> Iterator[np.ndarray]:
        """Whole frames, none reaching past ``until`` samples (the video encoded so far)."""
        while self._queued >= self.frame_size and self.taken + self.frame_size <= until:
            yield self._pop(self.frame_size)

    def finish(self, end: int) -> Iterator[np.ndarray]:
        """The rest, cut or padded with silence to ``end`` samples in all; the last frame may
        be shorter."""
        missing = end - self.position
        if missing > 0:
            self._append(np.zeros((self.channels, missing), dtype=np.float32))
        elif missing < 0:
            keep = max(0, self._queued + missing)
            self._parts = [self._joined()[:, :keep]] if keep else []
            self._queued, self.position = keep, self.taken + keep
        while self._queued:
            yield self._pop(min(self.frame_size, self._queued))

    def _joined(self) -> np.ndarray:
        if len(self._parts) == 1:
            return self._parts[0]
        if not self._parts:
            return np.zeros((self.channels, 0), dtype=np.float32)
        return np.concatenate(self._parts, axis=1)

    def _pop(self, count: int) -> np.ndarray:
        buffer = self._joined()
        self._parts = [buffer[:, count:]] if buffer.shape[1] > count else []
        self._queued -= count
        self.taken += count
        return buffer[:, :count]


def avc_codecs(extradata: bytes) -> str:
    """``avc1.PPCCLL`` from the encoder's SPS (Annex B parameter sets or an avcC record)."""
    if extradata[:1] == b"\x01" and len(extradata) >= 4:
        return f"avc1.{extradata[1]:02x}{extradata[2]:02x}{extradata[3]:02x}"
    for part in extradata.split(b"\x00\x00\x01")[1:]:
        if len(part) >= 4 and part[0] & 0x1F == 7:
            return f"avc1.{part[1]:02x}{part[2]:02x}{part[3]:02x}"
    raise ValueError("no SPS in the encoder's extradata")
