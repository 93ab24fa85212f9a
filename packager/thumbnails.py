"""Thumbnails: a poster, storyboard sprite sheets with their WebVTT, and single frames on demand.

``make_set`` (the worker) decodes a video once, front to back, and converts only the frames it
keeps: one tile every ``interval`` seconds, composed into sheets with numpy, and the poster.
``frame_at`` decodes the keyframe at or before a time from a file; ``keyframe_jpeg`` does the
same from that keyframe's sample alone (the gateway reads just those bytes, on any storage).
Pictures come out upright (the display matrix is applied) at their display aspect, in even
sizes, as JPEG from FFmpeg's MJPEG encoder (one packet is one JPEG file).

Geometry, WebVTT text and request parsing are pure functions; PyAV errors are caught here, at
the boundary, and become ``BadMedia`` saying what could not be read.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import re
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import numpy.typing as npt

from backends.errors import BadMedia, InvalidRequest, UnsupportedMedia
from packager.index import Track

# Bump when the bytes made from the same input change: part of cache keys and ETags.
VERSION = 1
# MJPEG quantiser (ffmpeg's -q:v: 2 best .. 31 worst): no visible blocking at these sizes.
QUALITY = 3
POSTER_MAX_WIDTH = 1280
MIN_WIDTH, MAX_WIDTH, DEFAULT_WIDTH = 32, 1920, 320
# Far past any video we accept (probe.MAX_SECONDS): a larger time is a mistake, not a seek.
MAX_TIME = 7 * 86_400.0
POSTER_AT = 0.1  # of the duration: past fades from black and title cards, still early
POSTER, STORYBOARD = "poster.jpg", "storyboard.vtt"
# MP4 sample entry types -> FFmpeg decoders, for decoding a lone keyframe sample.
DECODERS = {"avc1": "h264", "avc3": "h264", "hvc1": "hevc", "hev1": "hevc"}
# A frame this close before a tile's time counts as at it (timestamps are rounded).
_EPSILON = 0.001

RGB = npt.NDArray[np.uint8]


# Pure helpers ------------------------------------------------------------------------------


def sprite_name(number: int) -> str:
    return f"sprite-{number}.jpg"


def even(value: float) -> int:
    """``value`` rounded to the nearest even number, at least 2 (4:2:0 JPEGs, video sizes)."""
    return max(2, round(value / 2) * 2)


def fit(width: int, height: int, target_width: int) -> tuple[int, int]:
    """A ``width`` x ``height`` picture scaled to ``target_width`` (made even), aspect kept."""
    if width <= 0 or height <= 0:
        raise BadMedia(f"the video has no picture size ({width}x{height})")
    out_width = max(2, target_width // 2 * 2)
    return out_width, even(out_width * height / width)


def display_size(
    width: int, height: int, sample_aspect: Fraction | None, rotation: int
) -> tuple[int, int]:
    """Size the picture is shown at: non-square pixels widened, turned by ``rotation``."""
    shown = round(width * sample_aspect) if sample_aspect else width
    return (height, shown) if quarter_turns(rotation) % 2 else (shown, height)


def quarter_turns(rotation: float) -> int:
    """Counterclockwise quarter turns (as numpy's rot90 counts them) for ``rotation`` degrees."""
    return round(rotation / 90) % 4


def rotation_of(matrix: bytes) -> int:
    """Degrees counterclockwise to turn the decoded picture for display, from an MP4 tkhd
    matrix: what FFmpeg's ``av_display_rotation_get`` (and PyAV's ``frame.rotation``) says."""
    if len(matrix) != 36:
        return 0
    a, b, _, c, d, *_ = struct.unpack(">9i", matrix)
    if math.hypot(a, c) == 0 or math.hypot(b, d) == 0:
        return 0
    return round(-math.degrees(math.atan2(b / math.hypot(b, d), a / math.hypot(a, c)))) % 360


def poster_time(duration: float) -> float:
    return max(0.0, duration) * POSTER_AT


def tile_times(duration: float, interval: float) -> list[float]:
    """Start of each storyboard tile: every ``interval`` seconds while the video lasts."""
    if interval <= 0:
        raise ValueError("interval must be positive")
    count = max(1, math.ceil(duration / interval - 1e-9))
    return [n * interval for n in range(count)]


@dataclass(frozen=True)
class Grid:
    """How tiles sit on sprite sheets: ``columns`` x ``rows`` tiles a sheet, row by row."""

    tile_width: int
    tile_height: int
    columns: int
    rows: int

    @property
    def per_sheet(self) -> int:
        return self.columns * self.rows

    def sheets(self, tiles: int) -> int:
        return math.ceil(tiles / self.per_sheet)

    def place(self, tile: int) -> tuple[int, int, int]:
        """(sheet number from 1, x, y) of tile number ``tile`` (from 0)."""
        sheet, slot = divmod(tile, self.per_sheet)
        row, column = divmod(slot, self.columns)
        return sheet + 1, column * self.tile_width, row * self.tile_height

    def sheet_size(self, tiles: int) -> tuple[int, int]:
        """Size of a sheet holding ``tiles`` tiles: a last, partial sheet has only the rows it
        uses (and only the columns, when it has a single row)."""
        columns = min(tiles, self.columns)
        rows = math.ceil(tiles / self.columns)
        return columns * self.tile_width, rows * self.tile_height


def vtt_time(seconds: float) -> str:
    millis = round(max(0.0, seconds) * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    return f"{hours:02d}:{minutes:02d}:{millis // 1000:02d}.{millis % 1000:03d}"


def storyboard(grid: Grid, times: list[float], duration: float) -> str:
    """The WebVTT storyboard: one cue per tile, pointing at its sprite sheet region. URLs are
    relative to the folder of the sheets (see ``relink`` for other places)."""
    lines = ["WEBVTT", ""]
    for n, start in enumerate(times):
        end = times[n + 1] if n + 1 < len(times) else max(duration, start)
        sheet, x, y = grid.place(n)
        lines.append(f"{vtt_time(start)} --> {vtt_time(end)}")
        lines.append(f"{sprite_name(sheet)}#xywh={x},{y},{grid.tile_width},{grid.tile_height}")
        lines.append("")
    return "\n".join(lines)


_CUE_URL = re.compile(r"^(sprite-[1-9][0-9]{0,5}\.jpg)(#xywh=[0-9]+,[0-9]+,[0-9]+,[0-9]+)$", re.M)


def relink(vtt: str, prefix: str, query: str = "") -> str:
    """The storyboard with each sprite URL under ``prefix`` and carrying ``query`` (e.g.
    ``?token=…``, which must come before the ``#xywh`` fragment); other lines are untouched."""
    return _CUE_URL.sub(lambda m: f"{prefix}{m.group(1)}{query}{m.group(2)}", vtt)


_SECONDS = re.compile(r"[0-9]{1,9}(?:\.[0-9]{1,6})?")
_PIXELS = re.compile(r"[0-9]{1,5}")


def parse_request(query: Mapping[str, str], duration: float) -> tuple[float, int]:
    """(seconds, width) of a thumbnail request: ``time`` in seconds (default: the poster's;
    past the end: the end), ``width`` in pixels (default 320, made even). InvalidRequest
    saying what is wrong otherwise."""
    return _seconds(query.get("time"), duration), _width(query.get("width"))


def _seconds(raw: str | None, duration: float) -> float:
    end = max(0.0, duration)
    if raw is None:
        return poster_time(end)
    if not _SECONDS.fullmatch(raw):
        raise InvalidRequest(_time_problem(raw))
    value = float(raw)
    if value > MAX_TIME:
        raise InvalidRequest(f"time must be at most {MAX_TIME:.0f} seconds")
    return min(value, end)


def _time_problem(raw: str) -> str:
    try:
        value = float(raw)
    except ValueError:
        return "time must be a number of seconds from the start, like 12.5"
    if not math.isfinite(value):
        return "time must be a finite number of seconds"
    if value < 0:
        return "time must not be negative"
    return "time must be plain seconds with at most 6 decimals, like 12.5"


def _width(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_WIDTH
    if not _PIXELS.fullmatch(raw) or not MIN_WIDTH <= int(raw) <= MAX_WIDTH:
        raise InvalidRequest(
            f"width must be a whole number of pixels from {MIN_WIDTH} to {MAX_WIDTH}"
        )
    return int(raw) // 2 * 2


def track_seconds(track: Track) -> float:
    """How long the track is presented, in seconds."""
    info = track.info
    return max(0, info.presentation_end - info.presentation_start) / info.timescale


def keyframe_at(track: Track, seconds: float) -> int:
    """Sample number of the keyframe shown last at or before ``seconds`` (the first keyframe
    for a time before it)."""
    sync = track.sync_indices
    if sync.shape[0] == 0:
        raise BadMedia("the video has no keyframes")
    target = track.info.presentation_start + round(seconds * track.info.timescale)
    times = track.pts[sync]
    before = np.flatnonzero(times <= target)
    if before.shape[0] == 0:
        return int(sync[np.argmin(times)])
    return int(sync[before[np.argmax(times[before])]])


# PyAV at the boundary ----------------------------------------------------------------------


@dataclass(frozen=True)
class ThumbnailSet:
    """What ``make_set`` wrote into ``folder``; ``names`` lists every file, poster first."""

    folder: Path
    duration: float
    poster_time: float
    poster_size: tuple[int, int]
    grid: Grid
    tiles: int
    sprites: tuple[str, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return (POSTER, *self.sprites, STORYBOARD)


def make_set(
    source_path: str | Path,
    out_dir: str | Path,
    interval: float = 5.0,
    tile_width: int = 160,
    columns: int = 5,
    rows: int = 5,
    poster_width: int = POSTER_MAX_WIDTH,
) -> ThumbnailSet:
    """Write ``poster.jpg``, ``sprite-{n}.jpg`` and ``storyboard.vtt`` for the video at
    ``source_path`` into ``out_dir``. BadMedia when its pictures cannot be decoded."""
    if interval <= 0 or columns < 1 or rows < 1 or tile_width < 2 or poster_width < 2:
        raise ValueError("interval, tile_width, columns, rows and poster_width must be positive")
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with _opened(source_path) as (container, video):
        duration = _duration(container, video)
        times = tile_times(duration, interval)
        poster_at = poster_time(duration)
        frames = container.decode(video)
        first = next(frames, None)
        if first is None:
            raise BadMedia("no picture of the video could be decoded")
        rotation = _rotation(first)
        shown = display_size(first.width, first.height, video.sample_aspect_ratio, rotation)
        tile = fit(*shown, tile_width)
        grid = Grid(tile[0], tile[1], columns, rows)
        sheets = _Sheets(grid, len(times), folder)
        poster_size = fit(*shown, min(poster_width, shown[0]))
        poster: bytes | None = None
        last = first
        for frame in itertools.chain([first], frames):
            at = frame.time
            if at is None:
                continue
            last = frame
            picture: RGB | None = None
            while sheets.added < len(times) and at >= times[sheets.added] - _EPSILON:
                picture = picture if picture is not None else _upright(frame, tile, rotation)
                sheets.add(picture)
            if poster is None and at >= poster_at - _EPSILON:
                poster = jpeg(_upright(frame, poster_size, rotation))
            if poster is not None and sheets.added == len(times):
                break  # the rest of the video is not shown anywhere
        # Times past the last decodable frame show that frame.
        while sheets.added < len(times):
            sheets.add(_upright(last, tile, rotation))
        if poster is None:
            poster = jpeg(_upright(last, poster_size, rotation))
    (folder / POSTER).write_bytes(poster)
    (folder / STORYBOARD).write_text(storyboard(grid, times, duration), encoding="utf-8")
    return ThumbnailSet(
        folder, duration, poster_at, poster_size, grid, len(times), tuple(sheets.names)
    )


def frame_at(source_path: str | Path, seconds: float, width: int) -> bytes:
    """JPEG of the keyframe at or before ``seconds`` (past the end: the last keyframe),
    ``width`` wide (made even), its height by the display aspect."""
    with _opened(source_path) as (container, video):
        end = _duration(container, video)
        target = min(max(0.0, seconds), end)
        base = video.time_base or Fraction(1, 90_000)
        # Backward: the demuxer lands on the keyframe at or before the target.
        container.seek(int(target / base), stream=video, backward=True)
        frame = next(container.decode(video), None)
        if frame is None:
            raise BadMedia(f"no picture could be decoded at {target:.3f} s")
        rotation = _rotation(frame)
        shown = display_size(frame.width, frame.height, video.sample_aspect_ratio, rotation)
        return jpeg(_upright(frame, fit(*shown, width), rotation))


def keyframe_jpeg(
    codec: str, codec_config: bytes, sample: bytes, width: int, rotation: int
) -> bytes:
    """JPEG of one keyframe decoded from its MP4 sample alone (``codec``: the sample entry
    type, ``codec_config``: its avcC/hvcC payload; ``rotation`` from ``rotation_of``)."""
    decoder = DECODERS.get(codec)
    if decoder is None:
        raise UnsupportedMedia(f"thumbnails of {codec!r} video are not supported")
    context: Any = av.CodecContext.create(decoder, "r")
    try:
        context.extradata = codec_config
        frames = context.decode(av.Packet(sample)) + context.decode(None)
    except (av.FFmpegError, ValueError) as exc:
        raise BadMedia(f"the keyframe cannot be decoded ({type(exc).__name__})") from None
    if not frames:
        raise BadMedia("the keyframe cannot be decoded")
    frame = frames[0]
    shown = display_size(frame.width, frame.height, context.sample_aspect_ratio, rotation)
    return jpeg(_upright(frame, fit(*shown, width), rotation))


def jpeg(picture: RGB) -> bytes:
    """Encode an RGB picture (even sizes) as a baseline JPEG."""
    height, width = picture.shape[:2]
    frame = av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(format="yuvj420p")
    encoder = av.CodecContext.create("mjpeg", "w")
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuvj420p"
    encoder.time_base = Fraction(1, 1)
    # A fixed quantiser: MJPEG's default rate control would size a still for a 200 kbit/s stream.
    encoder.qscale = True
    encoder.options = {"qmin": str(QUALITY), "qmax": str(QUALITY)}
    return b"".join(bytes(p) for p in encoder.encode(frame) + encoder.encode(None))


class _Sheets:
    """Tiles placed on the current sheet; a full sheet is encoded and written at once, so
    memory holds one sheet whatever the video's length."""

    def __init__(self, grid: Grid, total: int, folder: Path) -> None:
        self.grid = grid
        self.total = total
        self.folder = folder
        self.added = 0
        self.names: list[str] = []
        self._sheet: RGB | None = None

    def add(self, tile: RGB) -> None:
        number, x, y = self.grid.place(self.added)
        if self._sheet is None:
            in_sheet = min(self.grid.per_sheet, self.total - (number - 1) * self.grid.per_sheet)
            width, height = self.grid.sheet_size(in_sheet)
            self._sheet = np.zeros((height, width, 3), dtype=np.uint8)
        self._sheet[y : y + tile.shape[0], x : x + tile.shape[1]] = tile
        self.added += 1
        if self.added == self.total or self.added % self.grid.per_sheet == 0:
            name = sprite_name(number)
            (self.folder / name).write_bytes(jpeg(self._sheet))
            self.names.append(name)
            self._sheet = None


@contextlib.contextmanager
def _opened(path: str | Path) -> Iterator[tuple[Any, Any]]:
    """The container and its first video stream; PyAV errors inside become BadMedia."""
    try:
        container = av.open(str(path))
    except (av.FFmpegError, ValueError) as exc:
        raise BadMedia(f"not a readable video file ({type(exc).__name__})") from None
    with container:
        if not container.streams.video:
            raise BadMedia("the file has no video stream")
        video = container.streams.video[0]
        video.thread_type = "AUTO"  # frame threads: a long decode uses every core
        try:
            yield container, video
        except av.FFmpegError as exc:
            raise BadMedia(f"the video cannot be decoded ({type(exc).__name__})") from None


def _duration(container: Any, video: Any) -> float:
    if video.duration is not None and video.time_base is not None and video.duration > 0:
        return float(video.duration * video.time_base)
    if container.duration is not None and container.duration > 0:
        return float(container.duration) / av.time_base
    raise BadMedia("the video has no duration")


def _rotation(frame: Any) -> int:
    # PyAV 14+ reports the display matrix's rotation (counterclockwise degrees) on frames.
    return round(float(getattr(frame, "rotation", 0) or 0)) % 360


def _upright(frame: Any, size: tuple[int, int], rotation: int) -> RGB:
    """The frame as RGB at display ``size``, turned upright."""
    turns = quarter_turns(rotation)
    width, height = size
    stored = (height, width) if turns % 2 else (width, height)
    rgb: RGB = frame.reformat(
        width=stored[0], height=stored[1], format="rgb24", interpolation="AREA"
    ).to_ndarray()
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb
