"""Playback URLs -> frozen request records. Pure, table-tested.

Path mode (DESIGN.md):
  /vod/{asset}/master.m3u8                     multivariant playlist, default segment format
  /vod/{asset}/master-ts.m3u8 | master-fmp4.m3u8   ... with the format chosen in the path
  /vod/{asset}/{rendition}/index[-ts|-fmp4].m3u8   media playlist
  /vod/{asset}/{rendition}/iframes[-ts|-fmp4].m3u8 I-frame playlist
  /vod/{asset}/{rendition}/init.mp4             fMP4 initialisation segment
  /vod/{asset}/{rendition}/seg-{n}.m4s | .ts    media segment n (1-based)

The format lives in the path, never in the query, because CDNs cache on the path and usually
drop the query (which carries the token). Only canonical spellings are accepted (no leading zeros,
no alternative names), so one piece of content has one URL and one cache entry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from backends.errors import MediaNotFound, SegmentOutOfRange
from backends.paths import clean
from packager.playlists import Format

Kind = Literal["master", "media", "iframes", "init", "segment"]

SINGLE_RENDITION = "main"
_RENDITION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_PLAYLIST = re.compile(r"(master|index|iframes)(?:-(ts|fmp4))?\.m3u8")
_SEGMENT = re.compile(r"seg-([1-9][0-9]{0,8})\.(m4s|ts)")
_MAX_SEGMENT_TEXT = 24


@dataclass(frozen=True)
class PlaybackRequest:
    asset: str  # cleaned path of the MP4 file or the rendition folder, relative to the library
    kind: Kind
    format: Format | None  # None: the configured default (playlists without a suffix)
    rendition: str = ""
    number: int = 0  # segment number, 1-based


def parse(path: str) -> PlaybackRequest:
    """Parse the part of the URL after ``/vod/``. Raises MediaNotFound for anything else."""
    head, _, name = path.rpartition("/")
    if not head:
        raise MediaNotFound("playback URLs look like /vod/{path}/master.m3u8")
    playlist = _PLAYLIST.fullmatch(name)
    if playlist and playlist.group(1) == "master":
        fmt: Format | None = playlist.group(2)  # type: ignore[assignment]
        return PlaybackRequest(asset=_asset(head), kind="master", format=fmt)
    asset_path, _, rendition = head.rpartition("/")
    if not asset_path or not _RENDITION.fullmatch(rendition):
        raise MediaNotFound("no such playback resource")
    asset = _asset(asset_path)
    if playlist:
        kind: Kind = "media" if playlist.group(1) == "index" else "iframes"
        fmt = playlist.group(2)  # type: ignore[assignment]
        return PlaybackRequest(asset=asset, kind=kind, format=fmt, rendition=rendition)
    if name == "init.mp4":
        return PlaybackRequest(asset=asset, kind="init", format="fmp4", rendition=rendition)
    segment = _SEGMENT.fullmatch(name) if len(name) <= _MAX_SEGMENT_TEXT else None
    if segment:
        fmt = "fmp4" if segment.group(2) == "m4s" else "ts"
        number = int(segment.group(1))
        return PlaybackRequest(asset, "segment", fmt, rendition, number)
    if name.startswith("seg-"):
        raise SegmentOutOfRange(f"malformed segment name {name[:40]!r}")
    raise MediaNotFound("no such playback resource")


def is_rendition_name(name: str) -> bool:
    return _RENDITION.fullmatch(name) is not None


def _asset(path: str) -> str:
    asset = clean(path)
    if not asset:
        raise MediaNotFound("no asset path given")
    return asset
