"""Uploads judged by content: what PyAV finds in generated files of each kind, and the rules."""

from __future__ import annotations

from pathlib import Path

import av
import msgspec
import pytest

from backends.errors import BadMedia
from packager.probe import MediaFacts, check, plays_as_is, probe
from tests.media import MediaLibrary

FACTS = MediaFacts(
    container="mp4",
    duration=60.0,
    width=1920,
    height=1080,
    video_codec="h264",
    audio_codec="aac",
    audio_channels=2,
    rotation=0,
    frame_rate=30.0,
)


def _with(**changes: object) -> MediaFacts:
    return msgspec.structs.replace(FACTS, **changes)


@pytest.mark.parametrize(
    ("facts", "problem"),
    [
        (FACTS, None),
        (_with(width=4320, height=7680), None),  # portrait 8K
        (_with(width=7680, height=4320, duration=7200.0), None),
        (_with(duration=7201.0), "at most 120"),
        (_with(duration=0.0), "no duration"),
        (_with(width=7681), "at most 7680x4320"),
        (_with(width=5000, height=5000), "at most 7680x4320"),
    ],
)
def test_rules(facts: MediaFacts, problem: str | None) -> None:
    if problem is None:
        check(facts)
    else:
        with pytest.raises(BadMedia, match=problem):
            check(facts)


@pytest.mark.parametrize(
    ("facts", "as_is"),
    [
        (FACTS, True),
        (_with(audio_codec=None), True),
        (_with(video_codec="hevc"), False),
        (_with(audio_codec="opus"), False),
        (_with(container="mkv"), False),
    ],
)
def test_what_plays_as_is(facts: MediaFacts, as_is: bool) -> None:
    assert plays_as_is(facts) is as_is


def _remux(source: Path, target: Path, fmt: str) -> Path:
    with av.open(str(source)) as src, av.open(str(target), "w", format=fmt) as out:
        video = out.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is None:
                continue
            packet.stream = video
            out.mux(packet)
    return target


def _encode_avi(target: Path) -> Path:
    """A tiny MPEG-4 Part 2 AVI, encoded here (AVI does not take the H.264 fixtures as they are)."""
    import numpy as np

    with av.open(str(target), "w", format="avi") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for index in range(20):
            picture = np.full((48, 64, 3), index * 10, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return target


def test_probe_generated_files(media: MediaLibrary, tmp_path: Path) -> None:
    facts = probe(str(media.good("h264_30fps_bframes")))
    assert (facts.container, facts.video_codec, facts.audio_codec) == ("mp4", "h264", "aac")
    assert facts.audio_channels == 2
    assert facts.duration == pytest.approx(14, abs=0.2)
    assert (facts.width, facts.height) == (320, 180)
    assert plays_as_is(facts)
    assert probe(str(media.good("video_only"))).audio_codec is None
    assert not plays_as_is(probe(str(media.good("hevc"))))
    # By content, not by name: the same video in Matroska and AVI, under misleading names.
    mkv = _remux(media.good("video_only"), tmp_path / "clip.mp4", "matroska")
    assert probe(str(mkv)).container == "mkv"
    avi = _encode_avi(tmp_path / "clip.mov")
    facts = probe(str(avi))
    assert (facts.container, facts.video_codec, facts.width) == ("avi", "mpeg4", 64)
    assert not plays_as_is(facts)


def test_probe_refuses_what_is_not_a_video(media: MediaLibrary, tmp_path: Path) -> None:
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 100)
    noise = tmp_path / "noise.mp4"
    noise.write_bytes(bytes(range(256)) * 400)
    for path, reason in (
        (text, "not a readable video|not accepted"),
        (noise, "not a readable video|not accepted"),
        (media.good("audio_only"), "no video stream"),
    ):
        with pytest.raises(BadMedia, match=reason):
            probe(str(path))
