"""Playlist text from the pure builders, compared with exact expected text from tables."""

from __future__ import annotations

import re

import numpy as np
import pytest

from packager.playlists import Variant, bitrates, build_iframes, build_master, build_media, variant
from packager.segmenter import SegmenterConfig, plan
from tests.hls_text import extinf_ms, hand_plan, uris
from tests.synthetic import audio_track, index_of, video_track

FORMATS = ("fmp4", "ts")

# === 1. The pure builders, from tables =========================================================

# 6.006 s, 4.004 s and 2.965 s segments of 2.002 s fragments (29.97 fps, 2 s GOPs).
PLAN = hand_plan([0, 2002, 4004, 6006, 8008, 10010, 12975], [0, 3, 5, 6])
HEADER = (
    "#EXTM3U\n#EXT-X-VERSION:{v}\n#EXT-X-TARGETDURATION:6\n#EXT-X-MEDIA-SEQUENCE:1\n"
    "#EXT-X-PLAYLIST-TYPE:VOD\n#EXT-X-INDEPENDENT-SEGMENTS\n"
)


@pytest.mark.parametrize(
    ("fmt", "suffix", "expected"),
    [
        (
            "fmp4",
            "",
            HEADER.format(v=6) + '#EXT-X-MAP:URI="init.mp4"\n'
            "#EXTINF:6.006,\nseg-1.m4s\n#EXTINF:4.004,\nseg-2.m4s\n#EXTINF:2.965,\nseg-3.m4s\n"
            "#EXT-X-ENDLIST\n",
        ),
        (
            "fmp4",
            "?token=t",
            HEADER.format(v=6) + '#EXT-X-MAP:URI="init.mp4?token=t"\n'
            "#EXTINF:6.006,\nseg-1.m4s?token=t\n#EXTINF:4.004,\nseg-2.m4s?token=t\n"
            "#EXTINF:2.965,\nseg-3.m4s?token=t\n#EXT-X-ENDLIST\n",
        ),
        (
            "ts",
            "",
            HEADER.format(v=3)
            + "#EXTINF:6.006,\nseg-1.ts\n#EXTINF:4.004,\nseg-2.ts\n#EXTINF:2.965,\nseg-3.ts\n"
            "#EXT-X-ENDLIST\n",
        ),
    ],
)
def test_media_playlist_text(fmt: str, suffix: str, expected: str) -> None:
    assert build_media(PLAN, fmt, suffix) == expected  # type: ignore[arg-type]


# (fragment, offset, length) of each keyframe, per segment, as the muxers report them.
RANGES = [
    [(0, 0, 4000), (1, 50000, 4100), (2, 100000, 4200)],
    [(3, 0, 3900), (4, 60000, 4000)],
    [(5, 0, 3800)],
]
IFRAME_HEADER = HEADER.format(v=5) + "#EXT-X-I-FRAMES-ONLY\n"


def iframe_body(ext: str, shift: int = 0, suffix: str = "") -> str:
    durations = ["2.002"] * 5 + ["2.965"]
    entries = [
        (n, off + shift, length) for n, seg in enumerate(RANGES, 1) for _, off, length in seg
    ]
    return "".join(
        f"#EXTINF:{d},\n#EXT-X-BYTERANGE:{length}@{off}\nseg-{n}.{ext}{suffix}\n"
        for d, (n, off, length) in zip(durations, entries, strict=True)
    )


@pytest.mark.parametrize(
    ("fmt", "psi", "suffix", "expected"),
    [
        (
            "fmp4",
            0,
            "",
            IFRAME_HEADER + '#EXT-X-MAP:URI="init.mp4"\n' + iframe_body("m4s") + "#EXT-X-ENDLIST\n",
        ),
        (
            "ts",
            376,
            "",
            # The map is the PAT and PMT at the start of segment 1; ranges skip them.
            IFRAME_HEADER
            + '#EXT-X-MAP:URI="seg-1.ts",BYTERANGE="376@0"\n'
            + iframe_body("ts", shift=376)
            + "#EXT-X-ENDLIST\n",
        ),
        (
            "ts",
            376,
            "?token=t",
            IFRAME_HEADER
            + '#EXT-X-MAP:URI="seg-1.ts?token=t",BYTERANGE="376@0"\n'
            + iframe_body("ts", shift=376, suffix="?token=t")
            + "#EXT-X-ENDLIST\n",
        ),
    ],
)
def test_iframe_playlist_text(fmt: str, psi: int, suffix: str, expected: str) -> None:
    ranges = [[(f, off + psi, length) for f, off, length in seg] for seg in RANGES]
    assert build_iframes(PLAN, fmt, ranges, psi, suffix) == expected  # type: ignore[arg-type]


HD = Variant(
    uri="720p/index.m3u8",
    bandwidth=2_500_000,
    average_bandwidth=2_000_000,
    codecs="avc1.64001f,mp4a.40.2",
    resolution=(1280, 720),
    frame_rate=30000 / 1001,
    iframe_uri="720p/iframes.m3u8",
    iframe_bandwidth=300_000,
    iframe_codecs="avc1.64001f",
)
SD = Variant(
    uri="360p/index.m3u8",
    bandwidth=800_000,
    average_bandwidth=700_000,
    codecs="avc1.64001e,mp4a.40.2",
    resolution=(640, 360),
    frame_rate=30.0,
    iframe_uri="360p/iframes.m3u8",
    iframe_bandwidth=100_000,
    iframe_codecs="avc1.64001e",
)
AUDIO = Variant("audio/index.m3u8", 130_000, 128_000, "mp4a.40.2", None, None)


@pytest.mark.parametrize(
    ("variants", "suffix", "expected"),
    [
        (
            # Given highest first: written in ascending BANDWIDTH, I-frame streams after them.
            [HD, SD],
            "?token=abc",
            "#EXTM3U\n#EXT-X-VERSION:4\n#EXT-X-INDEPENDENT-SEGMENTS\n"
            "#EXT-X-STREAM-INF:BANDWIDTH=800000,AVERAGE-BANDWIDTH=700000,"
            'CODECS="avc1.64001e,mp4a.40.2",RESOLUTION=640x360,FRAME-RATE=30.000\n'
            "360p/index.m3u8?token=abc\n"
            "#EXT-X-STREAM-INF:BANDWIDTH=2500000,AVERAGE-BANDWIDTH=2000000,"
            'CODECS="avc1.64001f,mp4a.40.2",RESOLUTION=1280x720,FRAME-RATE=29.970\n'
            "720p/index.m3u8?token=abc\n"
            '#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=100000,CODECS="avc1.64001e",'
            'RESOLUTION=640x360,URI="360p/iframes.m3u8?token=abc"\n'
            '#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=300000,CODECS="avc1.64001f",'
            'RESOLUTION=1280x720,URI="720p/iframes.m3u8?token=abc"\n',
        ),
        (
            # Nothing needs a version above 1, no picture: no RESOLUTION, FRAME-RATE or I-frames.
            [AUDIO],
            "",
            "#EXTM3U\n#EXT-X-INDEPENDENT-SEGMENTS\n"
            '#EXT-X-STREAM-INF:BANDWIDTH=130000,AVERAGE-BANDWIDTH=128000,CODECS="mp4a.40.2"\n'
            "audio/index.m3u8\n",
        ),
    ],
)
def test_master_playlist_text(variants: list[Variant], suffix: str, expected: str) -> None:
    assert build_master(variants, suffix) == expected


@pytest.mark.parametrize(
    "text",
    [
        build_master([HD, SD, AUDIO], "?token=abc"),
        build_media(PLAN, "fmp4", "?token=abc"),
        build_media(PLAN, "ts", "?token=abc"),
        build_iframes(PLAN, "fmp4", RANGES, 0, "?token=abc"),
        build_iframes(PLAN, "ts", RANGES, 376, "?token=abc"),
    ],
    ids=["master", "media-fmp4", "media-ts", "iframes-fmp4", "iframes-ts"],
)
def test_token_reaches_every_uri(text: str) -> None:
    # A signed playlist must hand its token on to everything it lists, EXT-X-MAP included.
    found = uris(text)
    assert found
    assert all(uri.endswith("?token=abc") for uri in found), found


@pytest.mark.parametrize(
    ("durations_ms", "written"),
    [
        ([1, 999, 1000], ["0.001", "0.999", "1.000"]),
        ([6006, 10050, 123456], ["6.006", "10.050", "123.456"]),
    ],
)
def test_extinf_has_three_decimals(durations_ms: list[int], written: list[str]) -> None:
    frag_ms = np.concatenate(([0], np.cumsum(durations_ms))).tolist()
    text = build_media(hand_plan(frag_ms, list(range(len(frag_ms)))), "ts")
    assert re.findall(r"^#EXTINF:(.*),$", text, re.MULTILINE) == written


def absolute_ms(seconds: list[float]) -> list[int]:
    """Boundaries rounded from absolute times, as the segmenter keeps them."""
    return [round(s * 1000) for s in seconds]


@pytest.mark.parametrize(
    "frag_ms",
    [
        [0, 6000, 12000, 13500],
        [33, 6039, 12045, 12978],  # presentation starts after 0 (B-frames, edit list)
        # 100 segments of 6.006006 s (180 frames at 29.97): per-segment rounding would drift by
        # 0.6 ms a segment; rounding absolute times keeps the sum exact.
        absolute_ms([k * 180 * 1001 / 30000 for k in range(101)]),
        absolute_ms([k * 6.0 + (k > 0) * 0.0235 for k in range(11)]),
    ],
    ids=["plain", "late-start", "29.97-x100", "offset"],
)
@pytest.mark.parametrize("fmt", FORMATS)
def test_extinf_sum_equals_plan_duration(frag_ms: list[int], fmt: str) -> None:
    one_per_segment = hand_plan(frag_ms, list(range(len(frag_ms))))
    text = build_media(one_per_segment, fmt)  # type: ignore[arg-type]
    assert sum(extinf_ms(text)) == one_per_segment.duration_ms == frag_ms[-1] - frag_ms[0]


@pytest.mark.parametrize(
    ("sizes", "durations_ms", "expected"),
    [
        ([750_000, 500_000], [6000, 4000], (1_000_000, 1_000_000)),
        ([600_000, 100_000], [6000, 2000], (800_000, 700_000)),
        ([1000], [3000], (2667, 2667)),  # rounded up: never declare less than measured
        ([], [], (0, 0)),
    ],
)
def test_bitrates_are_peak_and_average(
    sizes: list[int], durations_ms: list[int], expected: tuple[int, int]
) -> None:
    got = bitrates(np.array(sizes, dtype=np.int64), np.array(durations_ms, dtype=np.int64))
    assert got == expected


@pytest.mark.parametrize(
    ("video", "audio", "codecs", "iframe_codecs"),
    [
        (True, True, "avc1.64001f,mp4a.40.2", "avc1.64001f"),
        (True, False, "avc1.64001f", "avc1.64001f"),
        (False, True, "mp4a.40.2", ""),
    ],
)
def test_variant_lists_only_present_codecs(
    video: bool, audio: bool, codecs: str, iframe_codecs: str
) -> None:
    tracks = [video_track(600)] if video else []
    tracks += [audio_track(20.0)] if audio else []
    index = index_of(*tracks)
    segments = plan(index, SegmenterConfig())
    sizes = np.full(segments.count, 100_000, dtype=np.int64)
    lengths = np.full(segments.frag_ms.shape[0] - 1, 5000, dtype=np.int64)
    v = variant(index, segments, sizes, "main/index.m3u8", "main/iframes.m3u8", lengths)
    assert v.codecs == codecs
    assert v.iframe_codecs == iframe_codecs
    assert (v.iframe_uri is not None) == video
    assert (v.resolution, v.frame_rate) == (((320, 180), 30.0) if video else (None, None))
