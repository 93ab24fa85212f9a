"""Reading HLS playlist text, for tests: tags, versions, EXTINF, byte ranges."""

from __future__ import annotations

import re

import m3u8
import numpy as np

from packager.segmenter import SegmentPlan

# Tags RFC 8216 allows in each kind of playlist (those a VOD origin could write).
MULTIVARIANT_TAGS = {
    "#EXTM3U",
    "#EXT-X-VERSION",
    "#EXT-X-INDEPENDENT-SEGMENTS",
    "#EXT-X-START",
    "#EXT-X-DEFINE",
    "#EXT-X-MEDIA",
    "#EXT-X-STREAM-INF",
    "#EXT-X-I-FRAME-STREAM-INF",
    "#EXT-X-SESSION-DATA",
    "#EXT-X-SESSION-KEY",
    "#EXT-X-CONTENT-STEERING",
}
MEDIA_TAGS = {
    "#EXTM3U",
    "#EXT-X-VERSION",
    "#EXT-X-TARGETDURATION",
    "#EXT-X-MEDIA-SEQUENCE",
    "#EXT-X-PLAYLIST-TYPE",
    "#EXT-X-INDEPENDENT-SEGMENTS",
    "#EXT-X-I-FRAMES-ONLY",
    "#EXT-X-MAP",
    "#EXTINF",
    "#EXT-X-BYTERANGE",
    "#EXT-X-ENDLIST",
}


# --- helpers: playlist text -----------------------------------------------------------------


def hand_plan(frag_ms: list[int], seg_frags: list[int], target: int = 6) -> SegmentPlan:
    """A plan written by hand: only the times matter to the playlist builders."""
    return SegmentPlan(
        np.array(frag_ms, dtype=np.int64), np.array(seg_frags, dtype=np.int64), None, None, target
    )


def extinf_ms(text: str) -> list[int]:
    """Every EXTINF in ms; fails unless each is written with exactly three decimals."""
    values = re.findall(r"^#EXTINF:(.*)$", text, re.MULTILINE)
    out = []
    for value in values:
        match = re.fullmatch(r"(\d+)\.(\d{3}),", value)
        assert match, f"EXTINF {value!r} is not written with three decimals"
        out.append(int(match[1]) * 1000 + int(match[2]))
    return out


def round_half_up(ms: int) -> int:
    return (ms + 500) // 1000


def tags(text: str) -> list[str]:
    return [line.split(":", 1)[0] for line in text.splitlines() if line.startswith("#EXT")]


def required_version(text: str) -> int:
    """The lowest EXT-X-VERSION the features used in ``text`` need (RFC 8216 section 7)."""
    used = set(tags(text))
    iframes_only = "#EXT-X-I-FRAMES-ONLY" in used
    version = 1
    if "#EXTINF" in used:
        version = 3  # this origin always writes EXTINF as a decimal number
    if used & {"#EXT-X-BYTERANGE", "#EXT-X-I-FRAMES-ONLY", "#EXT-X-I-FRAME-STREAM-INF"}:
        version = max(version, 4)
    if "#EXT-X-MAP" in used:
        version = max(version, 5 if iframes_only else 6)
    return version


def declared_version(text: str) -> int:
    found = re.findall(r"^#EXT-X-VERSION:(\d+)$", text, re.MULTILINE)
    assert len(found) <= 1, "EXT-X-VERSION appears more than once"
    return int(found[0]) if found else 1


def uris(text: str) -> list[str]:
    """Every URI a playlist refers to: URI lines and URI="..." attributes."""
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    return lines + re.findall(r'URI="([^"]*)"', text)


def byterange(segment: m3u8.Segment) -> tuple[int, int]:
    """(offset, length) of an I-frame entry; this origin always writes the offset."""
    length, offset = segment.byterange.split("@")
    return int(offset), int(length)


# --- helpers: the source, as ffprobe sees it ------------------------------------------------
