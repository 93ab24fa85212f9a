"""Playback URL parsing, from a table."""

from __future__ import annotations

import pytest

from backends.errors import MediaNotFound, SegmentOutOfRange
from gateway.ranges import RangeNotSatisfiable, parse_range
from gateway.urls import PlaybackRequest, parse


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("a.mp4/master.m3u8", PlaybackRequest("a.mp4", "master", None)),
        ("films/x/master-ts.m3u8", PlaybackRequest("films/x", "master", "ts")),
        ("x/master-fmp4.m3u8", PlaybackRequest("x", "master", "fmp4")),
        ("a.mp4/main/index.m3u8", PlaybackRequest("a.mp4", "media", None, "main")),
        ("lad/720p/index-ts.m3u8", PlaybackRequest("lad", "media", "ts", "720p")),
        ("lad/720p/iframes.m3u8", PlaybackRequest("lad", "iframes", None, "720p")),
        ("lad/720p/init.mp4", PlaybackRequest("lad", "init", "fmp4", "720p")),
        ("lad/720p/seg-1.m4s", PlaybackRequest("lad", "segment", "fmp4", "720p", 1)),
        ("a/b/c/v1/seg-123.ts", PlaybackRequest("a/b/c", "segment", "ts", "v1", 123)),
    ],
)
def test_parse(path: str, expected: PlaybackRequest) -> None:
    assert parse(path) == expected


@pytest.mark.parametrize(
    "path",
    [
        "master.m3u8",
        "a.mp4/master.m3u",
        "a.mp4/main/index.txt",
        "a.mp4/main/init.m4s",
        "a.mp4/-bad/index.m3u8",
        "../a.mp4/master.m3u8",
        "a/../../etc/master.m3u8",
        "/etc/master.m3u8",
        "a\\b/master.m3u8",
        "a\x00/master.m3u8",
        "a.mp4/main/index-webm.m3u8",
    ],
)
def test_not_found(path: str) -> None:
    with pytest.raises(MediaNotFound):
        parse(path)


@pytest.mark.parametrize(
    "name", ["seg-0.m4s", "seg-01.m4s", "seg--1.ts", "seg-1e3.ts", "seg-99999999999.m4s", "seg-.ts"]
)
def test_malformed_segment(name: str) -> None:
    with pytest.raises(SegmentOutOfRange):
        parse(f"a.mp4/main/{name}")


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 100, None),
        ("bytes=0-9", 100, (0, 10)),
        ("bytes=90-", 100, (90, 100)),
        ("bytes=90-500", 100, (90, 100)),
        ("bytes=-10", 100, (90, 100)),
        ("bytes=-500", 100, (0, 100)),
        ("bytes=0-0", 100, (0, 1)),
        ("bytes = 5-6", 100, (5, 7)),
        ("bytes=0-9,20-29", 100, None),
        ("bytes=9-3", 100, None),
        ("items=0-9", 100, None),
        ("bytes=abc", 100, None),
        ("bytes=-", 100, None),
    ],
)
def test_parse_range(header: str | None, size: int, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=100-200", "bytes=-0", "bytes=5000-"])
def test_unsatisfiable_range(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, 100)
