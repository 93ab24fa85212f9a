"""Segmenter rules, from tables, from random GOP structures, and on the real fixtures."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backends.errors import SegmentOutOfRange
from packager.index import MediaIndex
from packager.segmenter import MIN_FRAGMENT_MS, SegmenterConfig, SegmentPlan, plan
from tests.media import GOOD, MediaLibrary
from tests.synthetic import audio_track, index_of, video_track
from tests.test_index import index_of as read_file_index

DEFAULT = SegmenterConfig()


def check_rules(index: MediaIndex, result: SegmentPlan, config: SegmenterConfig = DEFAULT) -> None:
    """Every rule of the segmenter, asserted for one plan."""
    durations_ms = np.diff(result.times_ms)
    # No empty segment; numbering is dense.
    assert result.count >= 1
    assert np.all(durations_ms > 0)
    # No EXTINF, rounded to the nearest integer, above TARGETDURATION.
    assert all((int(d) + 500) // 1000 <= result.target_duration for d in durations_ms)
    assert result.target_duration >= round(config.target)
    video, audio = index.video, index.audio
    if video is not None:
        assert result.video is not None
        # Every segment (and every fragment) starts with a sync sample; all samples covered once.
        assert np.all(video.sync[result.video[:-1]])
        assert result.video[-1] == video.count
        assert np.all(np.diff(result.video) > 0)
        first = video.sync_indices[0]
        assert result.video[0] == first
        # Sum of EXTINF within one frame of the presentation duration.
        frame_ms = 1000 * float(video.durations.max()) / video.info.timescale
        real_ms = 1000 * (video.info.presentation_end - video.info.presentation_start)
        real_ms /= video.info.timescale
        assert abs(int(durations_ms.sum()) - real_ms) <= frame_ms
        # Overrun only where the keyframes leave no choice: no keyframe inside the allowed window.
        key_ms = np.rint(video.pts[video.sync_indices] * 1000 / video.info.timescale)
        for k, d in enumerate(durations_ms):
            if d > config.limit_ms:
                start = result.times_ms[k]
                window = key_ms[(key_ms > start) & (key_ms <= start + config.limit_ms)]
                last_segment = k == result.count - 1
                assert window.size == 0 or last_segment, f"segment {k + 1} overruns needlessly"
    if audio is not None:
        assert result.audio is not None
        # Whole AAC frames, each in exactly one segment: bounds increase, start at 0, end at N.
        assert result.audio[0] == 0
        assert result.audio[-1] == audio.count
        assert np.all(np.diff(result.audio) >= 0)
        if video is not None:
            # Cut at the audio frame boundary nearest each video boundary.
            frame = 1000 * 1024 / audio.info.timescale
            for f in range(1, result.video.shape[0] - 1):
                cut_ms = 1000 * audio.pts[result.audio[f]] / audio.info.timescale
                assert abs(cut_ms - result.frag_ms[f]) <= frame / 2 + 1


@pytest.mark.parametrize(
    ("name", "frames", "fps", "gop", "keyframes", "expected"),
    [
        ("2 s GOP, 60 s", 1800, 30, 60, None, [6.0] * 10),
        ("2 s GOP at 29.97", 1798, 29.97, 60, None, [6.006] * 9 + [5.939]),
        ("tail merged", 1810, 30, 60, None, [6.0] * 9 + [6.333]),
        ("tail rebalanced", 1830, 30, 60, None, [6.0] * 9 + [4.0, 3.0]),
        ("tail kept", 1890, 30, 60, None, [6.0] * 10 + [3.0]),
        ("1 s GOP", 900, 30, 30, None, [6.0] * 5),
        ("10 s GOP overruns", 900, 30, 300, None, [10.0] * 3),
        # Keyframes at 0, 1.3, 2.0, 5.5, 7.1, 9.9, 13.2 s; 16 s long.
        ("irregular", 480, 30, 0, [0, 39, 60, 165, 213, 297, 396], [5.5, 4.4, 6.1]),
        ("keyframe every frame", 300, 30, 1, None, [6.0, 4.0]),
        ("shorter than target", 90, 30, 60, None, [3.0]),
    ],
)
def test_boundaries(
    name: str,
    frames: int,
    fps: float,
    gop: int,
    keyframes: list[int] | None,
    expected: list[float],
) -> None:
    index = index_of(video_track(frames, fps, keyframes, gop or 60))
    result = plan(index, DEFAULT)
    assert result.durations == pytest.approx(expected, abs=0.0015), name
    check_rules(index, result)


def test_overrun_stays_within_half_a_second_when_keyframes_allow() -> None:
    # Keyframes at 0, 5.0, 6.4, 11.0, ... : 6.4 fits (< 6.5), 7.0 would not.
    index = index_of(video_track(600, 30, [0, 150, 192, 330, 420, 510], 60))
    result = plan(index, DEFAULT)
    assert result.durations[0] == pytest.approx(6.4)
    assert max(result.durations) < 6.5
    check_rules(index, result)


def test_audio_follows_video_boundaries_including_priming_and_tail() -> None:
    index = index_of(video_track(1800, 30, bframes=True), audio_track(60.05))
    result = plan(index, DEFAULT)
    check_rules(index, result)
    assert result.audio is not None
    assert index.audio is not None
    first_cut = int(result.audio[result.seg_frags[1]])
    # The priming frame (pts < 0) belongs to segment 1, the tail past the video to the last.
    assert index.audio.pts[0] < 0
    assert first_cut > 0
    assert result.audio[-1] == index.audio.count


def test_audio_only_is_cut_by_time() -> None:
    index = index_of(audio_track(20.0))
    result = plan(index, DEFAULT)
    # 6 + 6 + 8 would break the 6.5 s limit, so the tail is rebalanced into 4 + 4.
    assert result.durations == pytest.approx([6.0, 6.0, 4.0, 4.0], abs=1024 / 48000)
    assert result.video is None
    check_rules(index, result)


def test_fragments_are_at_least_a_second_apart() -> None:
    index = index_of(video_track(900, 30, gop=10))
    result = plan(index, DEFAULT)
    assert np.all(np.diff(result.frag_ms)[:-1] >= MIN_FRAGMENT_MS)
    assert result.seg_frags[-1] == result.frag_ms.shape[0] - 1


def test_target_duration_setting() -> None:
    index = index_of(video_track(1800, 30, gop=30))
    result = plan(index, SegmenterConfig(target=4.0))
    assert result.durations == pytest.approx([4.0] * 15)
    assert result.target_duration == 4


def test_plan_is_pure_and_numbering_starts_at_one() -> None:
    index = index_of(video_track(1800, 30), audio_track(60))
    a, b = plan(index, DEFAULT), plan(index, DEFAULT)
    assert np.array_equal(a.times_ms, b.times_ms)
    assert np.array_equal(a.audio, b.audio)
    assert a.check(1) == 0
    assert a.check(a.count) == a.count - 1
    for bad in (0, -1, a.count + 1):
        with pytest.raises(SegmentOutOfRange):
            a.check(bad)


@settings(max_examples=150, deadline=None)
@given(
    gaps=st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=40),
    tail=st.integers(min_value=1, max_value=400),
    fps=st.sampled_from([23.976, 25.0, 29.97, 30.0, 50.0, 60.0]),
    target=st.sampled_from([2.0, 4.0, 6.0, 10.0]),
    with_audio=st.booleans(),
)
def test_rules_hold_for_any_gop_structure(
    gaps: list[int], tail: int, fps: float, target: float, with_audio: bool
) -> None:
    keyframes = np.cumsum([0, *gaps]).tolist()
    frames = keyframes[-1] + tail
    video = video_track(frames, fps, keyframes)
    tracks = [video]
    if with_audio:
        tracks.append(audio_track(frames / fps))
    index = index_of(*tracks)
    config = SegmenterConfig(target=target)
    check_rules(index, plan(index, config), config)


@pytest.mark.anyio
@pytest.mark.parametrize("name", sorted(GOOD))
async def test_rules_hold_on_real_files(media: MediaLibrary, name: str) -> None:
    index = await read_file_index(media.good(name))
    check_rules(index, plan(index, DEFAULT))
    check_rules(index, plan(index, SegmenterConfig(target=2.0)), SegmenterConfig(target=2.0))
