"""Thumbnails made by the packager: geometry, WebVTT and request parsing as tables; poster,
sprite sheets and single frames from generated video, rotated video included (checked against
FFmpeg's own autorotation)."""

from __future__ import annotations

import io
import itertools
import struct
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from backends.blocking import BlockingRunner
from backends.errors import BadMedia, InvalidRequest, UnsupportedMedia
from backends.storage import open_storage
from conf.settings import StorageSettings
from packager import thumbnails as th
from packager.index import MediaIndex
from packager.mp4 import read_index
from packager.thumbnails import Grid
from tests.conftest import require
from tests.media import CORRUPT, MediaLibrary
from tests.synthetic import video_track

SOURCE = "h264_30fps_bframes"  # 14 s, 320x180, 30 fps, B-frames, a keyframe every 2 s
DURATION = 14.0

# tkhd matrices (a, b, u, c, d, v, x, y, w) whose rotation FFmpeg reports as these degrees
# counterclockwise: what phones write for portrait video.
MATRICES = {
    90: (0, -0x10000, 0, 0x10000, 0, 0, 0, 0, 0x40000000),
    180: (-0x10000, 0, 0, 0, -0x10000, 0, 0, 0, 0x40000000),
    270: (0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000),
}


def rotated_copy(source: Path, target: Path, degrees: int) -> Path:
    """``source`` with its video track's display matrix set for ``degrees``."""
    data = bytearray(source.read_bytes())
    tkhd = data.index(b"tkhd", data.index(b"moov"))  # the first track: synth writes video first
    assert data[tkhd + 4] == 0  # version 0: the matrix is 40 bytes into the box's payload
    matrix = tkhd + 4 + 40
    data[matrix : matrix + 36] = struct.pack(">9i", *MATRICES[degrees])
    target.write_bytes(bytes(data))
    return target


def picture(jpeg: bytes, fmt: str = "rgb24") -> np.ndarray:
    """The decoded pixels of a JPEG (PyAV opens one like any other file)."""
    with av.open(io.BytesIO(jpeg), "r") as container:
        frame = next(container.decode(video=0))
        assert container.streams.video[0].codec_context.name == "mjpeg"
        return frame.to_ndarray(format=fmt)


def difference(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.abs(a.astype(np.int32) - b.astype(np.int32)).mean())


def cues(vtt: str) -> list[tuple[float, float, str, tuple[int, int, int, int]]]:
    """(start, end, sheet, (x, y, w, h)) of each cue: an independent little WebVTT reader."""
    assert vtt.startswith("WEBVTT\n\n")
    found = []
    for block in vtt.strip().split("\n\n")[1:]:
        timing, target = block.split("\n")
        start, end = (_seconds(t) for t in timing.split(" --> "))
        url, fragment = target.split("#xywh=")
        x, y, w, h = (int(v) for v in fragment.split(","))
        found.append((start, end, url, (x, y, w, h)))
    return found


def _seconds(stamp: str) -> float:
    hours, minutes, seconds = stamp.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


# Pure helpers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "duration", "expected"),
    [
        ({}, 14.0, (1.4, 320)),  # the poster's time, the default width
        ({"time": "7", "width": "160"}, 14.0, (7.0, 160)),
        ({"time": "7.25", "width": "161"}, 14.0, (7.25, 160)),  # widths are made even
        ({"time": "0"}, 14.0, (0.0, 320)),
        ({"time": "0.000001"}, 14.0, (0.000001, 320)),
        ({"time": "15"}, 14.0, (14.0, 320)),  # past the end: the end
        ({"time": "604800"}, 14.0, (14.0, 320)),
        ({"width": "32"}, 14.0, (1.4, 32)),
        ({"width": "1920"}, 14.0, (1.4, 1920)),
        ({"time": "3", "token": "ignored"}, 0.0, (0.0, 320)),
    ],
)
def test_parse_request(query: dict[str, str], duration: float, expected: tuple[float, int]) -> None:
    seconds, width = th.parse_request(query, duration)
    assert seconds == pytest.approx(expected[0])
    assert width == expected[1]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"time": "abc"}, "time must be a number of seconds"),
        ({"time": ""}, "time must be a number of seconds"),
        ({"time": "nan"}, "finite"),
        ({"time": "inf"}, "finite"),
        ({"time": "-Infinity"}, "finite"),
        ({"time": "-1"}, "must not be negative"),
        ({"time": "-0.5"}, "must not be negative"),
        ({"time": "1e3"}, "plain seconds"),
        ({"time": " 5"}, "plain seconds"),
        ({"time": "1_000"}, "plain seconds"),
        ({"time": "5.1234567"}, "plain seconds"),
        ({"time": "9" * 10}, "plain seconds"),
        ({"time": "604801"}, "at most 604800 seconds"),
        ({"time": "99999999"}, "at most 604800 seconds"),
        ({"width": "31"}, "width must be a whole number of pixels from 32 to 1920"),
        ({"width": "1921"}, "from 32 to 1920"),
        ({"width": "0"}, "from 32 to 1920"),
        ({"width": "-320"}, "from 32 to 1920"),
        ({"width": "320.5"}, "from 32 to 1920"),
        ({"width": "wide"}, "from 32 to 1920"),
        ({"width": "9" * 400}, "from 32 to 1920"),
        ({"width": ""}, "from 32 to 1920"),
    ],
)
def test_parse_request_refuses(query: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        th.parse_request(query, 14.0)


@pytest.mark.parametrize(
    ("size", "target", "expected"),
    [
        ((320, 180), 160, (160, 90)),
        ((320, 180), 161, (160, 90)),
        ((320, 180), 200, (200, 112)),  # 112.5 -> the nearest even height
        ((1920, 1080), 1280, (1280, 720)),
        ((180, 320), 160, (160, 284)),  # portrait
        ((426, 240), 160, (160, 90)),
        ((100, 100), 33, (32, 32)),
        ((4000, 10), 32, (32, 2)),  # never below 2 pixels
    ],
)
def test_fit(size: tuple[int, int], target: int, expected: tuple[int, int]) -> None:
    assert th.fit(*size, target) == expected


def test_fit_refuses_a_picture_without_size() -> None:
    with pytest.raises(BadMedia, match="no picture size"):
        th.fit(0, 180, 160)


@pytest.mark.parametrize(
    ("width", "height", "aspect", "rotation", "expected"),
    [
        (320, 180, None, 0, (320, 180)),
        (320, 180, None, 90, (180, 320)),
        (320, 180, None, 180, (320, 180)),
        (320, 180, None, 270, (180, 320)),
        (320, 180, None, -90, (180, 320)),
        (720, 576, Fraction(16, 15), 0, (768, 576)),  # PAL 4:3, non-square pixels
        (720, 576, Fraction(16, 15), 90, (576, 768)),
    ],
)
def test_display_size(
    width: int,
    height: int,
    aspect: Fraction | None,
    rotation: int,
    expected: tuple[int, int],
) -> None:
    assert th.display_size(width, height, aspect, rotation) == expected


@pytest.mark.parametrize(
    ("matrix", "expected"),
    [
        ((0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000), 0),
        (MATRICES[90], 90),
        (MATRICES[180], 180),
        (MATRICES[270], 270),
        ((0, 0, 0, 0, 0, 0, 0, 0, 0), 0),  # degenerate: no rotation rather than an error
    ],
)
def test_rotation_of_tkhd_matrix(matrix: tuple[int, ...], expected: int) -> None:
    assert th.rotation_of(struct.pack(">9i", *matrix)) == expected
    assert th.rotation_of(b"") == 0


@pytest.mark.parametrize(
    ("duration", "interval", "expected"),
    [
        (14.0, 5.0, [0.0, 5.0, 10.0]),
        (10.0, 5.0, [0.0, 5.0]),  # a tile starting at the very end would show nothing
        (10.001, 5.0, [0.0, 5.0, 10.0]),
        (3.0, 5.0, [0.0]),
        (0.0, 5.0, [0.0]),
        (2.5, 1.0, [0.0, 1.0, 2.0]),
    ],
)
def test_tile_times(duration: float, interval: float, expected: list[float]) -> None:
    assert th.tile_times(duration, interval) == expected


def test_grid_places_tiles_row_by_row_sheet_by_sheet() -> None:
    grid = Grid(160, 90, columns=3, rows=2)
    assert [grid.place(n) for n in range(8)] == [
        (1, 0, 0),
        (1, 160, 0),
        (1, 320, 0),
        (1, 0, 90),
        (1, 160, 90),
        (1, 320, 90),
        (2, 0, 0),
        (2, 160, 0),
    ]
    assert grid.sheets(6) == 1
    assert grid.sheets(7) == 2
    assert grid.sheet_size(6) == (480, 180)
    assert grid.sheet_size(4) == (480, 180)  # a partial last row still spans the columns
    assert grid.sheet_size(3) == (480, 90)  # only the rows used
    assert grid.sheet_size(2) == (320, 90)  # one row: only the columns used


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "00:00:00.000"),
        (5, "00:00:05.000"),
        (12.3456, "00:00:12.346"),
        (59.9996, "00:01:00.000"),
        (3723.5, "01:02:03.500"),
        (360_000, "100:00:00.000"),
        (-1, "00:00:00.000"),
    ],
)
def test_vtt_time(seconds: float, text: str) -> None:
    assert th.vtt_time(seconds) == text


def test_storyboard_text() -> None:
    grid = Grid(160, 90, columns=2, rows=1)
    text = th.storyboard(grid, [0.0, 5.0, 10.0], 12.5)
    assert text == (
        "WEBVTT\n\n"
        "00:00:00.000 --> 00:00:05.000\nsprite-1.jpg#xywh=0,0,160,90\n\n"
        "00:00:05.000 --> 00:00:10.000\nsprite-1.jpg#xywh=160,0,160,90\n\n"
        "00:00:10.000 --> 00:00:12.500\nsprite-2.jpg#xywh=0,0,160,90\n"
    )


@pytest.mark.parametrize(
    ("prefix", "query", "line"),
    [
        ("", "", "sprite-1.jpg#xywh=0,0,160,90"),
        ("thumbs/", "", "thumbs/sprite-1.jpg#xywh=0,0,160,90"),
        (
            "thumbs/",
            "?token=v1.k1.abc.def",
            "thumbs/sprite-1.jpg?token=v1.k1.abc.def#xywh=0,0,160,90",
        ),
    ],
)
def test_relink_puts_the_query_before_the_fragment(prefix: str, query: str, line: str) -> None:
    text = th.storyboard(Grid(160, 90, 5, 5), [0.0], 5.0)
    assert th.relink(text, prefix, query).split("\n")[3] == line


def test_relink_touches_only_sprite_urls() -> None:
    text = "WEBVTT\n\nNOTE sprite-1.jpg#xywh=0,0,1,1 here\n\n00:00:00.000 --> 00:00:01.000\n"
    text += "http://elsewhere/sprite-1.jpg#xywh=0,0,1,1\nsprite-01.jpg#xywh=0,0,1,1\n"
    assert th.relink(text, "thumbs/", "?token=x") == text


def test_keyframe_at() -> None:
    track = video_track(300, fps=30, gop=60, bframes=True)  # keyframes at 0, 2, 4, 6, 8 s
    cases = {0.0: 0, 1.99: 0, 2.0: 60, 2.01: 60, 7.5: 180, 9.99: 240, 1000.0: 240}
    for seconds, sample in cases.items():
        assert th.keyframe_at(track, seconds) == sample, seconds
    assert th.track_seconds(track) == pytest.approx(10.0)
    irregular = video_track(300, fps=30, keyframes=[0, 39, 200])
    assert th.keyframe_at(irregular, 1.3) == 39
    assert th.keyframe_at(irregular, 6.6) == 39
    assert th.keyframe_at(irregular, 6.7) == 200


# From media ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def source(media: MediaLibrary) -> Path:
    return media.good(SOURCE)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("thumbnails")


@pytest.fixture(scope="module")
def made(source: Path, work: Path) -> th.ThumbnailSet:
    return th.make_set(source, work / "default")


@pytest.fixture(scope="module", params=[90, 270])
def rotated(request: pytest.FixtureRequest, source: Path, work: Path) -> tuple[int, Path]:
    degrees: int = request.param
    path = rotated_copy(source, work / f"rotated-{degrees}.mp4", degrees)
    with av.open(str(path)) as container:
        assert next(container.decode(video=0)).rotation % 360 == degrees  # the patch took
    return degrees, path


def test_make_set_writes_poster_sheets_and_storyboard(made: th.ThumbnailSet) -> None:
    assert made.duration == pytest.approx(DURATION, abs=0.05)
    assert made.tiles == 3  # 0, 5, 10 s
    assert made.grid == Grid(160, 90, 5, 5)
    assert made.sprites == ("sprite-1.jpg",)
    assert made.names == ("poster.jpg", "sprite-1.jpg", "storyboard.vtt")
    assert sorted(p.name for p in made.folder.iterdir()) == sorted(made.names)
    poster = picture((made.folder / "poster.jpg").read_bytes())
    assert poster.shape == (180, 320, 3)  # the source's own size: below the 1280 cap
    assert made.poster_time == pytest.approx(1.4)
    sheet = picture((made.folder / "sprite-1.jpg").read_bytes())
    assert sheet.shape == (90, 480, 3)  # one row of three tiles
    found = cues((made.folder / "storyboard.vtt").read_text())
    assert [(s, e) for s, e, _, _ in found] == [(0, 5), (5, 10), (10, pytest.approx(14, abs=0.05))]
    assert [box for _, _, _, box in found] == [
        (0, 0, 160, 90),
        (160, 0, 160, 90),
        (320, 0, 160, 90),
    ]


def test_tiles_show_their_times(made: th.ThumbnailSet, source: Path) -> None:
    sheet = picture((made.folder / "sprite-1.jpg").read_bytes())
    tiles = [sheet[:, x : x + 160] for x in (0, 160, 320)]
    # 0 s and 10 s are keyframes: frame_at decodes the very same pictures.
    assert difference(tiles[0], picture(th.frame_at(source, 0, 160))) < 3
    assert difference(tiles[2], picture(th.frame_at(source, 10, 160))) < 3
    assert difference(tiles[0], tiles[1]) > 10
    assert difference(tiles[1], tiles[2]) > 10


def test_many_sheets_and_a_partial_last_one(source: Path, work: Path) -> None:
    made = th.make_set(source, work / "dense", interval=1.0, tile_width=64, columns=3, rows=2)
    assert made.tiles == 14
    assert made.sprites == ("sprite-1.jpg", "sprite-2.jpg", "sprite-3.jpg")
    sizes = {}
    for name in made.sprites:
        pixels = picture((made.folder / name).read_bytes())
        sizes[name] = (pixels.shape[1], pixels.shape[0])
    assert sizes == {
        "sprite-1.jpg": (192, 72),
        "sprite-2.jpg": (192, 72),
        "sprite-3.jpg": (128, 36),
    }
    found = cues((made.folder / "storyboard.vtt").read_text())
    assert len(found) == 14
    assert found[0][0] == 0
    assert found[-1][1] == pytest.approx(DURATION, abs=0.05)
    for (_, end, _, _), (start, _, _, _) in itertools.pairwise(found):
        assert end == start  # contiguous: every instant has its tile
    for _, _, sheet, (x, y, w, h) in found:
        width, height = sizes[sheet]
        assert (w, h) == (64, 36)
        assert x >= 0
        assert y >= 0
        assert x + w <= width
        assert y + h <= height


def test_poster_is_capped_and_even(source: Path, work: Path) -> None:
    made = th.make_set(source, work / "small-poster", poster_width=101)
    assert made.poster_size == (100, 56)
    assert picture((made.folder / "poster.jpg").read_bytes()).shape == (56, 100, 3)


def test_rotated_video_comes_out_upright(
    rotated: tuple[int, Path], made: th.ThumbnailSet, work: Path
) -> None:
    degrees, path = rotated
    turned = th.make_set(path, work / f"upright-{degrees}")
    assert turned.poster_size == (180, 320)
    assert turned.grid.tile_width == 160
    assert turned.grid.tile_height == 284
    poster = picture((turned.folder / "poster.jpg").read_bytes())
    upright = picture((made.folder / "poster.jpg").read_bytes())
    # The same picture, turned counterclockwise by the rotation the file declares.
    assert difference(poster, np.rot90(upright, degrees // 90)) < 4
    assert difference(poster, np.rot90(upright, -degrees // 90)) > 20
    frame = picture(th.frame_at(path, 7, 90))
    assert frame.shape == (160, 90, 3)


@pytest.mark.player
def test_rotation_agrees_with_ffmpeg(rotated: tuple[int, Path], work: Path) -> None:
    """FFmpeg turns video upright by default: its first frame is our first tile."""
    ffmpeg = require("ffmpeg", "install ffmpeg (apt-get install ffmpeg; scripts/test does it)")
    degrees, path = rotated
    turned = th.make_set(path, work / f"ffmpeg-{degrees}")
    sheet = picture((turned.folder / "sprite-1.jpg").read_bytes(), "gray")
    ours = sheet[:284, :160]
    command = [ffmpeg, "-v", "error", "-i", str(path), "-frames:v", "1"]
    command += ["-vf", "scale=160:284:flags=area", "-f", "rawvideo", "-pix_fmt", "gray", "-"]
    raw = subprocess.run(command, capture_output=True, check=True, timeout=60).stdout
    theirs = np.frombuffer(raw, dtype=np.uint8).reshape(284, 160)
    assert difference(ours, theirs) < 6


def test_frame_at(source: Path) -> None:
    shot = picture(th.frame_at(source, 7, 200))
    assert shot.shape == (112, 200, 3)  # width honoured, height by aspect, even
    assert picture(th.frame_at(source, 7, 201)).shape == (112, 200, 3)
    assert picture(th.frame_at(source, 1, 640)).shape == (360, 640, 3)  # larger than the source
    # From the keyframe at or before the time: 7 s shows the keyframe at 6 s.
    assert th.frame_at(source, 7, 200) == th.frame_at(source, 6, 200)
    assert difference(shot, picture(th.frame_at(source, 1, 200))) > 10
    # Past the end: the last keyframe (12 s).
    assert th.frame_at(source, 1000, 200) == th.frame_at(source, 12.5, 200)
    assert th.frame_at(source, -5, 200) == th.frame_at(source, 0, 200)


async def _index(path: Path) -> MediaIndex:
    runner = BlockingRunner(2)
    storage = open_storage(StorageSettings(library=str(path.parent)), runner)
    try:
        return await read_index(storage, await storage.stat(path.name), runner, 1 << 30)
    finally:
        await storage.close()


@pytest.mark.anyio
@pytest.mark.parametrize(("name", "degrees"), [(SOURCE, 0), (SOURCE, 90), ("hevc", 0)])
async def test_a_keyframe_sample_alone_gives_the_same_jpeg(
    media: MediaLibrary, work: Path, name: str, degrees: int
) -> None:
    """What the gateway does (one sample read, one decode) equals decoding the file."""
    path = media.good(name)
    if degrees:
        path = rotated_copy(path, work / f"sample-{degrees}.mp4", degrees)
    index = await _index(path)
    track = index.video
    assert track is not None
    rotation = th.rotation_of(track.info.matrix)
    assert rotation == degrees
    data = path.read_bytes()
    for seconds in (0.0, 7.0, th.track_seconds(track) - 0.1):
        k = th.keyframe_at(track, seconds)
        start = int(track.offset[k])
        sample = data[start : start + int(track.size[k])]
        alone = th.keyframe_jpeg(track.info.codec, track.info.codec_config, sample, 160, rotation)
        assert alone == th.frame_at(path, seconds, 160), seconds


def test_keyframe_jpeg_refuses_what_it_cannot_decode() -> None:
    with pytest.raises(UnsupportedMedia, match="'mp4v'"):
        th.keyframe_jpeg("mp4v", b"", b"\x00" * 100, 160, 0)
    with pytest.raises(BadMedia, match="keyframe cannot be decoded"):
        th.keyframe_jpeg("avc1", b"\x01\x64\x00\x1f", bytes(range(256)) * 4, 160, 0)


UNREADABLE = ("random_bytes", "text_file", "empty", "truncated_no_moov")


@pytest.mark.parametrize("kind", UNREADABLE)
def test_unreadable_files_are_bad_media(media: MediaLibrary, tmp_path: Path, kind: str) -> None:
    path = media.corrupt(kind)
    with pytest.raises(BadMedia, match="not a readable video file"):
        th.make_set(path, tmp_path)
    with pytest.raises(BadMedia, match="not a readable video file"):
        th.frame_at(path, 5, 160)


@pytest.mark.parametrize("kind", [k for k in CORRUPT if k not in UNREADABLE])
def test_damaged_files_give_bad_media_or_what_can_be_decoded(
    media: MediaLibrary, tmp_path: Path, kind: str
) -> None:
    """Never another exception: FFmpeg decodes what it can of a damaged file, and those
    thumbnails are whole; when nothing can be, BadMedia says so."""
    path = media.corrupt(kind)
    try:
        made: th.ThumbnailSet | None = th.make_set(path, tmp_path)
    except BadMedia:
        made = None
    if made is not None:
        for name in made.names:
            assert (tmp_path / name).stat().st_size > 0
    try:
        shot: bytes | None = th.frame_at(path, 5, 160)
    except BadMedia:
        shot = None
    if shot is not None:
        assert picture(shot).shape == (90, 160, 3)


def test_audio_only_has_no_thumbnails(media: MediaLibrary, tmp_path: Path) -> None:
    with pytest.raises(BadMedia, match="no video stream"):
        th.make_set(media.good("audio_only"), tmp_path)
    with pytest.raises(BadMedia, match="no video stream"):
        th.frame_at(media.good("audio_only"), 1, 160)


def test_make_set_refuses_a_senseless_layout(source: Path, tmp_path: Path) -> None:
    for bad in ({"interval": 0}, {"columns": 0}, {"rows": -1}, {"tile_width": 0}):
        with pytest.raises(ValueError, match="must be positive"):
            th.make_set(source, tmp_path, **bad)
    assert list(tmp_path.iterdir()) == []
