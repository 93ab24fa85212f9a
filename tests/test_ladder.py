"""The transcode ladder: the pure plan, then real transcodes of generated sources judged by
ffprobe, by our gateway (one ladder, no MisalignedLadder) and by ffmpeg reading the HLS.

Sources are small and short (two cores): most tests use a custom ladder of 360/240/144 so that
several rungs exist cheaply; each source is transcoded once per module.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import m3u8
import numpy as np
import pytest

from backends.errors import BadMedia
from packager.ladder import transcode
from packager.ladder_plan import (
    DEFAULT_RUNGS,
    MIN_BITRATE,
    FrameClock,
    LadderConfig,
    PlannedRung,
    Rung,
    RungOutput,
    SampleQueue,
    avc_codecs,
    output_rate,
    plan,
)
from packager.synth import SynthSpec, write
from tests.conftest import app_client, require
from tests.media import MediaLibrary
from tests.probe import boxes, ffprobe, keyframe_ms

SMALL = (Rung("360p", 360, 600_000), Rung("240p", 240, 400_000), Rung("144p", 144, 200_000))
CONFIG = LadderConfig(rungs=SMALL, preset="superfast")  # ultrafast is not High profile
FFMPEG_HINT = "apt-get install ffmpeg (scripts/test does it)"

# --- the plan (pure) -------------------------------------------------------------------------

L1080 = [(1920, 1080), (1280, 720), (854, 480), (640, 360)]
P1080 = [(h, w) for w, h in L1080]


def sizes(planned: list[PlannedRung]) -> list[tuple[int, int]]:
    return [(p.width, p.height) for p in planned]


@pytest.mark.parametrize(
    ("width", "height", "rotation", "sar", "expected"),
    [
        (1920, 1080, 0, None, L1080),
        (1920, 1080, 180, None, L1080),
        (3840, 2160, 0, None, L1080),  # no upscaled rung above the ladder's top
        (1920, 1080, 90, None, P1080),  # turned: portrait, the short side is the rung
        (1920, 1080, 270, None, P1080),
        (1080, 1920, 0, None, P1080),
        (1280, 720, 0, None, L1080[1:]),
        (1000, 600, 0, None, [(800, 480), (600, 360)]),  # nothing above the source
        (480, 480, 0, None, [(480, 480), (360, 360)]),
        (720, 480, 0, Fraction(32, 27), [(852, 480), (640, 360)]),  # anamorphic 16:9 DVD
        (1919, 1079, 0, None, L1080[1:]),  # odd: no 1080 rung, even sizes below
    ],
)
def test_plan_default_rungs(
    width: int, height: int, rotation: int, sar: Fraction | None, expected: list[Any]
) -> None:
    planned = plan(width, height, rotation, DEFAULT_RUNGS, sar)
    assert sizes(planned) == expected
    by_name = {r.name: r for r in DEFAULT_RUNGS}
    for p in planned:
        assert p.video_bitrate == by_name[p.name].video_bitrate
        assert p.width % 2 == 0
        assert p.height % 2 == 0


@pytest.mark.parametrize(
    ("width", "height", "rotation", "expected"),
    [
        (322, 182, 0, [("144p", 254, 144)]),  # odd source: even output, aspect kept
        (321, 181, 0, [("144p", 256, 144)]),
        (182, 322, 0, [("144p", 144, 254)]),
        (640, 360, 0, [("360p", 640, 360), ("240p", 426, 240), ("144p", 256, 144)]),
        (640, 360, 90, [("360p", 360, 640), ("240p", 240, 426), ("144p", 144, 256)]),
        (161, 91, 0, [("90p", 160, 90)]),  # below every rung: one at its own size
        (91, 161, 0, [("90p", 90, 160)]),
        (161, 91, 90, [("90p", 90, 160)]),
        (100, 100, 0, [("100p", 100, 100)]),
        (3, 3, 0, [("2p", 2, 2)]),
    ],
)
def test_plan_small_rungs(
    width: int, height: int, rotation: int, expected: list[tuple[str, int, int]]
) -> None:
    planned = plan(width, height, rotation, SMALL)
    assert [(p.name, p.width, p.height) for p in planned] == expected


def test_plan_tiny_source_bitrate_scales_with_pixels() -> None:
    (one,) = plan(160, 90, 0, SMALL)
    assert one.video_bitrate == round(200_000 * (90 / 144) ** 2)
    (dot,) = plan(8, 8, 0, SMALL)
    assert dot.video_bitrate == MIN_BITRATE


def test_plan_refuses_no_picture() -> None:
    with pytest.raises(BadMedia):
        plan(0, 1080)


@pytest.mark.parametrize(
    ("average", "max_fps", "expected"),
    [
        (None, 60, Fraction(30)),
        (Fraction(0), 60, Fraction(30)),
        (None, 24, Fraction(24)),
        (Fraction(30), 60, Fraction(30)),
        (Fraction(30000, 1001), 60, Fraction(30000, 1001)),
        (Fraction(2997, 100), 60, Fraction(30000, 1001)),  # rounded in the container
        (Fraction(3600, 121), 60, Fraction(30000, 1001)),  # a VFR phone clip's average
        (Fraction(24000, 1001), 60, Fraction(24000, 1001)),
        (Fraction(25), 60, Fraction(25)),
        (Fraction(5994, 100), 60, Fraction(60000, 1001)),
        (Fraction(120), 60, Fraction(60)),
        (Fraction(60), 30, Fraction(30)),
        (Fraction(15), 60, Fraction(15)),
        (Fraction(29, 2), 60, Fraction(15)),  # no standard rate near: whole frames/s
        (Fraction(1, 2), 60, Fraction(1)),
    ],
)
def test_output_rate(average: Fraction | None, max_fps: int, expected: Fraction) -> None:
    assert output_rate(average, max_fps) == expected


def slots(rate: Fraction, times: list[Fraction], end: Fraction) -> list[int]:
    """How many output slots each frame at ``times`` fills."""
    clock = FrameClock(rate)
    counts = [clock.push(t) for t in times]
    return [*counts[1:], clock.finish(end)]


def test_frame_clock_same_rate_is_one_to_one() -> None:
    times = [Fraction(i, 30) for i in range(10)]
    assert slots(Fraction(30), times, Fraction(10, 30)) == [1] * 10


def test_frame_clock_drops_and_repeats() -> None:
    sixty = [Fraction(i, 60) for i in range(8)]
    assert slots(Fraction(30), sixty, Fraction(8, 60)) == [1, 0, 1, 0, 1, 0, 1, 0]
    fifteen = [Fraction(i, 15) for i in range(4)]
    assert slots(Fraction(30), fifteen, Fraction(4, 15)) == [2, 2, 2, 2]
    # Irregular: the output covers the source's span exactly, frames shown when due.
    ms = [0, 40, 60, 120, 160, 190, 240, 500, 540]
    times = [Fraction(t, 1000) for t in ms]
    counts = slots(Fraction(25), times, Fraction(580, 1000))
    assert counts == [1, 1, 1, 1, 1, 1, 7, 1, 1]
    assert sum(counts) == 15  # 580 ms of 40 ms slots, the half rounded up


def test_frame_clock_later_start_and_single_frame() -> None:
    clock = FrameClock(Fraction(25))
    assert clock.push(Fraction(7)) == 0  # the timeline starts at the first frame
    assert clock.push(Fraction(7) + Fraction(1, 25)) == 1
    assert clock.finish(Fraction(7) + Fraction(2, 25)) == 1
    lone = FrameClock(Fraction(25))
    lone.push(Fraction(0))
    assert lone.finish(Fraction(0)) == 1  # shown at least once


def ramp(start: int, count: int) -> np.ndarray:
    values = np.arange(start, start + count, dtype=np.float32)
    return np.stack([values, -values])


def test_sample_queue_places_the_first_samples_exactly() -> None:
    late = SampleQueue(2, 4, tolerance=3)
    late.put(ramp(1, 6), at=2)  # audio starts 2 samples after the video: silence first
    assert [f[0].tolist() for f in late.take(until=100)] == [[0, 0, 1, 2], [3, 4, 5, 6]]
    early = SampleQueue(2, 4, tolerance=3)
    early.put(ramp(1, 6), at=-2)  # audio before the first picture is cut
    assert [f[0].tolist() for f in early.take(until=100)] == [[3, 4, 5, 6]]
    gone = SampleQueue(2, 4, tolerance=3)
    gone.put(ramp(1, 6), at=-10)
    assert gone.position == 0


def test_sample_queue_ignores_jitter_and_fills_holes() -> None:
    queue = SampleQueue(2, 4, tolerance=3)
    queue.put(ramp(1, 4), at=0)
    queue.put(ramp(5, 4), at=6)  # 2 samples late: jitter, kept contiguous
    queue.put(ramp(9, 4), at=20)  # 12 samples late: a hole, filled with silence
    queue.put(ramp(13, 4), at=12)  # 12 samples early: the overlap is cut
    frames = [f[0].tolist() for f in queue.take(until=100)]
    assert frames == [[1, 2, 3, 4], [5, 6, 7, 8], *[[0, 0, 0, 0]] * 3, [9, 10, 11, 12]]
    assert queue.position == 24


def test_sample_queue_takes_no_further_than_the_video_and_ends_exactly() -> None:
    queue = SampleQueue(2, 4, tolerance=3)
    queue.put(ramp(1, 10), at=0)
    assert len(list(queue.take(until=7))) == 1  # a second frame would pass sample 7
    assert [f.shape[1] for f in queue.finish(end=9)] == [4, 1]  # cut to the video's end
    padded = SampleQueue(2, 4, tolerance=3)
    padded.put(ramp(1, 3), at=0)
    tail = [f[0].tolist() for f in padded.finish(end=6)]
    assert tail == [[1, 2, 3, 0], [0, 0]]


def test_avc_codecs() -> None:
    annex_b = b"\x00\x00\x00\x01\x67\x64\x00\x1f\xac" + b"\x00\x00\x00\x01\x68\xeb"
    assert avc_codecs(annex_b) == "avc1.64001f"
    assert avc_codecs(b"\x01\x4d\x40\x1e\xff") == "avc1.4d401e"
    with pytest.raises(ValueError, match="SPS"):
        avc_codecs(b"\x00\x00\x01\x68\xeb\x00")


# --- generated sources -----------------------------------------------------------------------


def write_pattern(
    path: Path,
    size: tuple[int, int],
    times_ms: list[int],
    pix_fmt: str = "yuv420p",
    layout: str | None = None,
    audio_rate: int = 48000,
) -> Path:
    """Video whose top half is white and bottom half black, with a grey mark in the
    bottom-left corner, its frames at ``times_ms``; optional tone in ``layout``."""
    width, height = size
    with av.open(str(path), "w") as out:
        video: Any = out.add_stream("libx264", rate=30, options={"preset": "ultrafast"})
        video.width, video.height, video.pix_fmt = width, height, pix_fmt
        video.codec_context.time_base = Fraction(1, 1000)
        audio: Any = None
        if layout:
            audio = out.add_stream("aac", rate=audio_rate)
            audio.layout = layout
        image = np.zeros((height, width, 3), dtype=np.uint8)
        image[: height // 2] = 255
        image[height * 3 // 4 :, : width // 4] = 128
        for t in times_ms:
            noisy = image.copy()
            noisy[height // 2 : height * 3 // 4] = t % 200  # something moves
            frame = av.VideoFrame.from_ndarray(noisy, format="rgb24").reformat(format=pix_fmt)
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if audio is not None:
            _write_tone(out, audio, layout or "stereo", audio_rate, (times_ms[-1] + 33) / 1000)
    return path


def _write_tone(out: Any, stream: Any, layout: str, rate: int, seconds: float) -> None:
    channels = av.AudioLayout(layout).nb_channels
    total = round(seconds * rate)
    for start in range(0, total, 1024):
        count = min(1024, total - start)
        tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(start, start + count) / rate)
        samples = np.zeros((channels, count), dtype=np.float32)
        samples[2 if channels == 6 else 0] = tone  # centre channel of 5.1, else the left
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout=layout)
        frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
        out.mux(stream.encode(frame))
    out.mux(stream.encode(None))


def regular_ms(seconds: float, fps: int = 30) -> list[int]:
    return [round(i * 1000 / fps) for i in range(round(seconds * fps))]


# Gaps averaging 40 ms (25 fps) with short, long and duplicate-worthy ones.
VFR_MS = np.cumsum([0] + [40, 20, 60, 40, 30, 50, 40, 10, 70, 40] * 12).tolist()


def rotate_source(ffmpeg: str, plain: Path, out: Path, degrees: int) -> Path:
    """A copy of ``plain`` whose display matrix turns it ``degrees`` counterclockwise."""
    version = subprocess.run([ffmpeg, "-version"], capture_output=True, text=True).stdout
    major = int(version.split()[2].split(".")[0].lstrip("n"))
    if major >= 6:
        args = ["-display_rotation:v:0", str(degrees), "-i", str(plain), "-c", "copy"]
    else:  # ffmpeg 5: the old tag, whose number is the clockwise turn... as a matrix it is ccw
        args = ["-i", str(plain), "-c", "copy", "-metadata:s:v:0", f"rotate={degrees}"]
    subprocess.run([ffmpeg, "-v", "error", "-y", *args, str(out)], check=True, timeout=60)
    return out


class Made:
    """A source and the rungs transcoded from it."""

    def __init__(self, source: Path, rungs: list[RungOutput], progress: list[float]) -> None:
        self.source = source
        self.rungs = rungs
        self.progress = progress

    @property
    def paths(self) -> list[Path]:
        return [Path(r.path) for r in self.rungs]


def make(
    folder: Path, source: Path, config: LadderConfig = CONFIG, name: str | None = None
) -> Made:
    progress: list[float] = []
    out = folder / (name or source.stem)
    return Made(source, transcode(source, out, config, progress.append), progress)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ladder")


@pytest.fixture(scope="module")
def main_ladder(work: Path) -> Made:
    """640x360 30 fps with B-frames and 44.1 kHz audio: three rungs of the small ladder."""
    spec = SynthSpec(duration=6, width=640, height=360, audio_rate=44100, noise=8)
    return make(work, write(work / "src" / "main.mp4", spec))


@pytest.fixture(scope="module")
def made(work: Path, main_ladder: Made) -> dict[str, Made]:
    """Every other case, transcoded once."""
    ffmpeg = require("ffmpeg", FFMPEG_HINT)
    src = work / "src"
    cases: dict[str, Made] = {"main": main_ladder}
    plain = write_pattern(src / "upright.mp4", (320, 180), regular_ms(3))
    cases["rot90"] = make(work, rotate_source(ffmpeg, plain, src / "rot90.mp4", 90))
    cases["rot270"] = make(work, rotate_source(ffmpeg, plain, src / "rot270.mp4", 270))
    vfr = write_pattern(src / "vfr.mp4", (320, 180), VFR_MS, layout="stereo")
    cases["vfr"] = make(work, vfr)
    odd = write_pattern(src / "odd.mp4", (322, 182), regular_ms(3), pix_fmt="yuv444p")
    cases["odd"] = make(work, odd)
    surround = write_pattern(
        src / "surround.mp4", (161, 91), regular_ms(3), pix_fmt="yuv444p", layout="5.1"
    )
    cases["surround"] = make(work, surround)
    return cases


# --- every rung ------------------------------------------------------------------------------


def streams_of(path: Path) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for stream in ffprobe("-show_streams", path)["streams"]:
        found.setdefault(stream["codec_type"], stream)
    return found


def video_pts(path: Path) -> list[float]:
    packets = ffprobe("-select_streams", "v:0", "-show_entries", "packet=pts_time", path)
    return sorted(float(p["pts_time"]) for p in packets["packets"])


def source_seconds(path: Path) -> float:
    info = ffprobe("-show_format", "-show_streams", path)
    video = next(s for s in info["streams"] if s["codec_type"] == "video")
    return float(video.get("duration") or info["format"]["duration"])


def check_rung(path: Path, fps: Fraction, audio: bool) -> dict[str, dict[str, Any]]:
    info = streams_of(path)
    video = info["video"]
    assert video["codec_name"] == "h264"
    assert video["profile"] == "High"
    assert video["pix_fmt"] == "yuv420p"
    assert video["width"] % 2 == 0
    assert video["height"] % 2 == 0
    assert not [
        d for d in video.get("side_data_list", []) if "Display Matrix" in d["side_data_type"]
    ], "no display matrix is left"
    assert Fraction(video["r_frame_rate"]) == fps == Fraction(video["avg_frame_rate"])
    pts = video_pts(path)
    assert np.allclose(np.diff(pts), float(1 / fps), atol=1e-3), "constant frame rate"
    if audio:
        sound = info["audio"]
        assert (sound["codec_name"], sound["profile"]) == ("aac", "LC")
        assert (int(sound["sample_rate"]), sound["channels"]) == (48000, 2)
        assert 80_000 <= int(sound["bit_rate"]) <= 160_000
        assert abs(float(sound["duration"]) - float(video["duration"])) <= 0.05
    else:
        assert "audio" not in info
    kinds = [kind for kind, _, _ in boxes(path.read_bytes())]
    assert kinds.index(b"moov") < kinds.index(b"mdat"), "moov first (faststart)"
    return info


def test_every_rung_is_a_conforming_rendition(main_ladder: Made) -> None:
    rungs = main_ladder.rungs
    assert [(r.name, r.width, r.height) for r in rungs] == [
        ("360p", 640, 360),
        ("240p", 426, 240),
        ("144p", 256, 144),
    ]
    source = source_seconds(main_ladder.source)
    for rung in rungs:
        path = Path(rung.path)
        assert path.name == f"{rung.name}.mp4"
        info = check_rung(path, Fraction(30), audio=True)
        assert (info["video"]["width"], info["video"]["height"]) == (rung.width, rung.height)
        assert abs(float(info["video"]["duration"]) - source) <= 1 / 30 + 1e-6
        assert rung.duration == pytest.approx(6.0)
        assert rung.frame_rate == 30.0
        assert rung.bandwidth == round(path.stat().st_size * 8 / rung.duration)
        assert rung.codecs.startswith("avc1.64")
        assert rung.codecs.endswith(",mp4a.40.2")
    assert sorted(p.name for p in Path(rungs[0].path).parent.iterdir()) == [
        "144p.mp4",
        "240p.mp4",
        "360p.mp4",
    ], "no temporary files left"


def test_keyframes_every_two_seconds_at_the_same_times(main_ladder: Made) -> None:
    times = [keyframe_ms(path) for path in main_ladder.paths]
    assert times[0] == [0, 2000, 4000]
    assert all(t == times[0] for t in times)
    pts = [video_pts(path) for path in main_ladder.paths]
    assert all(p == pts[0] for p in pts), "every rung has the same frame times"


def mono_48k(path: Path) -> np.ndarray:
    resampler = av.AudioResampler(format="flt", layout="mono", rate=48000)
    with av.open(str(path)) as container:
        parts = [
            out.to_ndarray()[0]
            for frame in container.decode(audio=0)
            for out in resampler.resample(frame)
        ]
    return np.concatenate(parts)


def test_audio_starts_with_the_video(main_ladder: Made) -> None:
    """The output's sound lines up with the source's (AAC priming and resampling accounted
    for): the tone changes pitch every second, so the best alignment is unambiguous."""
    source = mono_48k(main_ladder.source)
    window = 1200  # samples either way: more than one AAC frame of misplacement
    reference = source[24_000:120_000]  # 0.5 s to 2.5 s, two pitch changes
    for path in main_ladder.paths:
        out = mono_48k(path)
        scores = np.correlate(out[24_000 - window : 120_000 + window], reference, mode="valid")
        assert abs(int(np.argmax(scores)) - window) <= 2, path.name


def test_progress_is_reported_in_order(main_ladder: Made) -> None:
    progress = main_ladder.progress
    assert progress == sorted(progress)
    assert 10 <= len(progress) <= 101
    assert progress[-1] == 1.0
    assert all(0 <= f <= 1 for f in progress)


def test_default_ladder_on_a_480p_source(work: Path) -> None:
    spec = SynthSpec(duration=4, width=854, height=480, fps=Fraction(25), bframes=3)
    source = write(work / "src" / "480.mp4", spec)
    rungs = make(work, source, LadderConfig(preset="superfast")).rungs
    assert [(r.name, r.width, r.height) for r in rungs] == [
        ("480p", 854, 480),
        ("360p", 640, 360),
    ]
    for rung in rungs:
        check_rung(Path(rung.path), Fraction(25), audio=True)
        assert keyframe_ms(Path(rung.path)) == [0, 2000]


# --- one ladder ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served_ladder(media: MediaLibrary, main_ladder: Made) -> str:
    """The main ladder as a folder of the test library: its path there."""
    folder = media.root / "transcoded" / "ladder"
    folder.mkdir(parents=True, exist_ok=True)
    for path in main_ladder.paths:
        shutil.copy(path, folder / path.name)
    return "transcoded/ladder"


@pytest.mark.anyio
@pytest.mark.parametrize("fmt", ["fmp4", "ts"])
async def test_the_rungs_package_as_one_ladder_that_ffmpeg_reads(
    media: MediaLibrary, served_ladder: str, fmt: str, tmp_path: Path
) -> None:
    """Our gateway serves the folder as one ladder (a MisalignedLadder would be a 422); every
    playlist and segment it serves, mirrored to disk, is read by ffmpeg without an error."""
    ffmpeg = require("ffmpeg", FFMPEG_HINT)
    base = f"/vod/{served_ladder}"

    async def fetch(relative: str) -> bytes:
        r = await http.get(f"{base}/{relative}")
        assert r.status_code == 200, (relative, r.status_code, r.text[:300])
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(r.content)
        return r.content

    async with app_client(media.root) as (http, _):
        master = m3u8.loads((await fetch(f"master-{fmt}.m3u8")).decode())
        assert sorted(p.stream_info.resolution for p in master.playlists) == [
            (256, 144),
            (426, 240),
            (640, 360),
        ]
        for variant in master.playlists:
            assert variant.stream_info.frame_rate == 30.0
            assert variant.stream_info.codecs.endswith("mp4a.40.2")
            folder = variant.uri.rsplit("/", 1)[0]
            playlist = m3u8.loads((await fetch(variant.uri)).decode())
            assert [s.duration for s in playlist.segments] == [6.0]
            if fmt == "fmp4":
                await fetch(f"{folder}/init.mp4")
            for segment in playlist.segments:
                assert len(await fetch(f"{folder}/{segment.uri}")) > 1000
    errors = await asyncio.to_thread(ffmpeg_errors, ffmpeg, tmp_path / f"master-{fmt}.m3u8")
    assert errors == ""


def ffmpeg_errors(ffmpeg: str, master: Path) -> str:
    """What ffmpeg says (at level error) reading every stream of ``master`` to the end."""
    command = [ffmpeg, "-nostdin", "-v", "error", "-i", str(master), "-map", "0", "-f", "null"]
    run = subprocess.run([*command, "-"], capture_output=True, text=True, timeout=120)
    return run.stderr if run.returncode == 0 else f"exit {run.returncode}: {run.stderr}"


# --- sources that need care ------------------------------------------------------------------


def gray(path: Path, ffmpeg: str, size: tuple[int, int]) -> np.ndarray:
    """The first picture of ``path`` as ffmpeg shows it (autorotated), scaled to ``size``."""
    width, height = size
    scale = f"scale={width}:{height}"
    command = [ffmpeg, "-v", "error", "-i", str(path), "-frames:v", "1", "-vf", scale]
    raw = subprocess.run(
        [*command, "-f", "rawvideo", "-pix_fmt", "gray", "-"],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    return np.frombuffer(raw, dtype=np.uint8).reshape(height, width).astype(np.int16)


@pytest.mark.parametrize(("case", "white_on_the_left"), [("rot90", True), ("rot270", False)])
def test_rotation_is_applied_to_the_pixels(
    made: dict[str, Made], case: str, white_on_the_left: bool
) -> None:
    ffmpeg = require("ffmpeg", FFMPEG_HINT)
    (rung,) = made[case].rungs  # 320x180 shown portrait: 180 wide, one 144p rung
    assert (rung.name, rung.width, rung.height) == ("144p", 144, 256)
    path = Path(rung.path)
    check_rung(path, Fraction(30), audio=False)
    frames = ffprobe("-select_streams", "v", "-show_frames", "-read_intervals", "%+#1", path)
    side_data = frames["frames"][0].get("side_data_list", [])
    assert not [d for d in side_data if "Display Matrix" in d["side_data_type"]]
    picture = gray(path, ffmpeg, (144, 256))
    left, right = picture[:, :72].mean(), picture[:, 72:].mean()
    assert (left > 200 and right < 110) if white_on_the_left else (right > 200 and left < 110)
    # The same picture as ffmpeg's own autorotation of the source shows it.
    reference = gray(made[case].source, ffmpeg, (144, 256))
    assert np.abs(picture - reference).mean() < 8


def test_variable_frame_rate_becomes_constant(made: dict[str, Made]) -> None:
    vfr = made["vfr"]
    (rung,) = vfr.rungs
    assert rung.frame_rate == 25.0
    info = check_rung(Path(rung.path), Fraction(25), audio=True)
    span = (VFR_MS[-1] + 40) / 1000  # the last frame lasts as long as the average
    assert abs(float(info["video"]["duration"]) - span) <= 1 / 25 + 1e-6
    assert int(info["video"]["nb_frames"]) == round(span * 25)
    assert keyframe_ms(Path(rung.path)) == [0, 2000, 4000]


def test_odd_dimensions_without_audio(made: dict[str, Made]) -> None:
    (rung,) = made["odd"].rungs
    assert (rung.name, rung.width, rung.height) == ("144p", 254, 144)
    assert rung.codecs.startswith("avc1.64")
    assert "mp4a" not in rung.codecs
    check_rung(Path(rung.path), Fraction(30), audio=False)


def test_surround_is_downmixed_and_a_tiny_source_gets_its_own_rung(
    made: dict[str, Made],
) -> None:
    (rung,) = made["surround"].rungs
    assert (rung.name, rung.width, rung.height) == ("90p", 160, 90)
    check_rung(Path(rung.path), Fraction(30), audio=True)
    with av.open(rung.path) as container:
        samples = np.concatenate(
            [f.to_ndarray() for f in container.decode(audio=0)], axis=1
        )  # planar float, 2 x n
    middle = samples[:, samples.shape[1] // 4 : samples.shape[1] * 3 // 4]
    levels = np.sqrt((middle**2).mean(axis=1))
    # The centre channel's tone is heard equally in both ears.
    assert levels[0] > 0.05
    assert levels[0] == pytest.approx(levels[1], rel=0.05)


# --- sources that fail -----------------------------------------------------------------------


def cut(data: bytes) -> bytes:
    return data[: len(data) * 6 // 10]


def overwrite_middle(data: bytes) -> bytes:
    noise = np.random.default_rng(3).integers(0, 256, 20_000, dtype=np.uint8).tobytes()
    middle = len(data) // 2
    return data[:middle] + noise + data[middle + len(noise) :]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (cut, r"the video stops after \d+\.\d s of its 6\.0 s: the file is cut short"),
        (overwrite_middle, r"the (video|audio) cannot be decoded after \d+\.\d s: "),
    ],
)
def test_a_damaged_source_fails_and_leaves_nothing(
    work: Path, damage: Callable[[bytes], bytes], message: str
) -> None:
    spec = SynthSpec(duration=6, width=320, height=180, faststart=True, noise=8)
    good = write(work / "src" / "whole.mp4", spec)
    bad = work / "src" / f"{damage.__name__}.mp4"
    bad.write_bytes(damage(good.read_bytes()))
    out = work / f"out-{damage.__name__}"
    with pytest.raises(BadMedia, match=message):
        transcode(bad, out, CONFIG)
    assert list(out.iterdir()) == []


def test_not_a_video_fails(work: Path) -> None:
    text = work / "src" / "notes.mp4"
    text.write_text("not a video\n" * 100)
    with pytest.raises(BadMedia, match="not a readable video file"):
        transcode(text, work / "out-text", CONFIG)
    assert not (work / "out-text").exists()


def test_an_exception_from_progress_stops_the_transcode(work: Path, main_ladder: Made) -> None:
    class Stop(Exception):
        pass

    def stop(fraction: float) -> None:
        if fraction >= 0.3:
            raise Stop

    out = work / "out-stopped"
    with pytest.raises(Stop):
        transcode(main_ladder.source, out, CONFIG, stop)
    assert list(out.iterdir()) == []
