"""HLS playlists as text: multivariant, media and I-frame. Pure functions of plans and sizes.

Versions are the lowest each playlist's features need (RFC 8216 section 7): float EXTINF -> 3,
BYTERANGE / I-FRAMES-ONLY -> 4, EXT-X-MAP in an I-frame playlist -> 5, EXT-X-MAP in a media
playlist -> 6. The multivariant playlist declares 4 when it lists I-frame streams.
URIs are relative, and ``suffix`` (e.g. ``?token=…``) is appended to every one of them, so a
signed playlist hands its token on to everything it lists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from packager.codecs import codec_string
from packager.index import I64, MediaIndex
from packager.segmenter import SegmentPlan

Format = Literal["fmp4", "ts"]
SEGMENT_EXTENSION: dict[Format, str] = {"fmp4": "m4s", "ts": "ts"}


@dataclass(frozen=True)
class Variant:
    """What a multivariant playlist says about one rendition."""

    uri: str
    bandwidth: int
    average_bandwidth: int
    codecs: str
    resolution: tuple[int, int] | None
    frame_rate: float | None
    iframe_uri: str | None = None
    iframe_bandwidth: int = 0
    iframe_codecs: str = ""


def codecs(index: MediaIndex) -> list[str]:
    return [codec_string(t.info.codec, t.info.codec_config) for t in index.tracks]


def frame_rate(index: MediaIndex) -> float | None:
    """Frames per second from the sample durations (an edit list's window is rounded to the
    movie timescale, so 29.97 fps would come out as 29.971 from it)."""
    video = index.video
    if video is None:
        return None
    span = int(video.durations.sum())
    return round(video.count * video.info.timescale / span, 3) if span > 0 else None


def bitrates(sizes: I64, durations_ms: I64) -> tuple[int, int]:
    """(peak, average) in bit/s over segments of ``sizes`` bytes lasting ``durations_ms``."""
    seconds = np.maximum(durations_ms, 1).astype(np.float64) / 1000.0
    peak = float((sizes * 8 / seconds).max()) if sizes.size else 0.0
    average = float(sizes.sum() * 8 / seconds.sum()) if sizes.size else 0.0
    return int(np.ceil(peak)), int(np.ceil(average))


def variant(
    index: MediaIndex,
    plan: SegmentPlan,
    sizes: I64,
    uri: str,
    iframe_uri: str | None = None,
    iframe_lengths: I64 | None = None,
) -> Variant:
    peak, average = bitrates(sizes, np.diff(plan.times_ms))
    video = index.video
    all_codecs = codecs(index)
    iframe_bandwidth = 0
    if iframe_lengths is not None and iframe_lengths.size:
        iframe_bandwidth = bitrates(iframe_lengths, np.diff(plan.frag_ms))[0]
    return Variant(
        uri=uri,
        bandwidth=peak,
        average_bandwidth=average,
        codecs=",".join(all_codecs),
        resolution=(video.info.width, video.info.height) if video else None,
        frame_rate=frame_rate(index),
        iframe_uri=iframe_uri if video else None,
        iframe_bandwidth=iframe_bandwidth,
        iframe_codecs=all_codecs[0] if video else "",
    )


def _attributes(pairs: Sequence[tuple[str, object]]) -> str:
    out = []
    for key, value in pairs:
        if value is None:
            continue
        if key in ("CODECS", "URI"):
            out.append(f'{key}="{value}"')
        elif isinstance(value, tuple):
            out.append(f"{key}={value[0]}x{value[1]}")
        elif isinstance(value, float):
            out.append(f"{key}={value:.3f}")
        else:
            out.append(f"{key}={value}")
    return ",".join(out)


def build_master(variants: Sequence[Variant], suffix: str = "") -> str:
    ordered = sorted(variants, key=lambda v: (v.bandwidth, v.uri))
    has_iframes = any(v.iframe_uri for v in ordered)
    lines = ["#EXTM3U"]
    if has_iframes:
        lines.append("#EXT-X-VERSION:4")
    lines.append("#EXT-X-INDEPENDENT-SEGMENTS")
    for v in ordered:
        attrs = _attributes(
            [
                ("BANDWIDTH", v.bandwidth),
                ("AVERAGE-BANDWIDTH", v.average_bandwidth),
                ("CODECS", v.codecs),
                ("RESOLUTION", v.resolution),
                ("FRAME-RATE", v.frame_rate),
            ]
        )
        lines += [f"#EXT-X-STREAM-INF:{attrs}", v.uri + suffix]
    for v in ordered:
        if v.iframe_uri:
            attrs = _attributes(
                [
                    ("BANDWIDTH", v.iframe_bandwidth),
                    ("CODECS", v.iframe_codecs),
                    ("RESOLUTION", v.resolution),
                    ("URI", v.iframe_uri + suffix),
                ]
            )
            lines.append(f"#EXT-X-I-FRAME-STREAM-INF:{attrs}")
    return "\n".join(lines) + "\n"


def _extinf(ms: int) -> str:
    return f"#EXTINF:{ms // 1000}.{ms % 1000:03d},"


def _header(version: int, target: int, extra: Sequence[str] = ()) -> list[str]:
    return [
        "#EXTM3U",
        f"#EXT-X-VERSION:{version}",
        f"#EXT-X-TARGETDURATION:{target}",
        "#EXT-X-MEDIA-SEQUENCE:1",
        "#EXT-X-PLAYLIST-TYPE:VOD",
        "#EXT-X-INDEPENDENT-SEGMENTS",
        *extra,
    ]


def segment_uri(number: int, fmt: Format) -> str:
    return f"seg-{number}.{SEGMENT_EXTENSION[fmt]}"


def build_media(plan: SegmentPlan, fmt: Format, suffix: str = "") -> str:
    extra = [f'#EXT-X-MAP:URI="init.mp4{suffix}"'] if fmt == "fmp4" else []
    lines = _header(6 if fmt == "fmp4" else 3, plan.target_duration, extra)
    for number, ms in enumerate(np.diff(plan.times_ms).tolist(), start=1):
        lines += [_extinf(int(ms)), segment_uri(number, fmt) + suffix]
    lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


def build_iframes(
    plan: SegmentPlan,
    fmt: Format,
    ranges: Sequence[Sequence[tuple[int, int, int]]],
    psi_size: int = 0,
    suffix: str = "",
) -> str:
    """``ranges[k]`` lists (fragment, offset, length) of each keyframe in segment k."""
    if fmt == "fmp4":
        extra = [f'#EXT-X-MAP:URI="init.mp4{suffix}"']
    else:
        extra = [f'#EXT-X-MAP:URI="{segment_uri(1, fmt)}{suffix}",BYTERANGE="{psi_size}@0"']
    frag_ms = np.diff(plan.frag_ms).tolist()
    longest = max((int(ms) for ms in frag_ms), default=0)
    target = max(plan.target_duration, (longest + 500) // 1000)
    lines = _header(5, target, ["#EXT-X-I-FRAMES-ONLY", *extra])
    for number, segment in enumerate(ranges, start=1):
        for fragment, offset, length in segment:
            lines += [
                _extinf(int(frag_ms[fragment])),
                f"#EXT-X-BYTERANGE:{length}@{offset}",
                segment_uri(number, fmt) + suffix,
            ]
    lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"
