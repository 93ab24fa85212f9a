"""Path-mode assets: from a library path to packaged renditions, with their cached work.

An asset is one MP4 (one rendition, named ``main``) or a folder whose MP4 files are the
renditions of a ladder (named after the file stem: ``720p.mp4`` -> ``720p``). For every source
file the index and the segment plan are built once per (storage, path, etag, size, versions,
settings) and kept in the cache tiers (in-process and, when configured, Redis, which holds the
index as bytes); concurrent misses share one build. Failures to parse are cached the same way,
so a corrupt file is not re-read on every request. Segments go through the same cache, keyed by
their source's version: a replaced file can never be answered with the old file's bytes.
"""

from __future__ import annotations

import asyncio
import posixpath
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import msgspec
import numpy as np

from backends import paths, tracing
from backends.blocking import BlockingRunner
from backends.cache import Entry, TieredCache, keys, tags_for
from backends.errors import BadMedia, MediaNotFound, MisalignedLadder, UnsupportedMedia
from backends.storage import ObjectInfo, Storage
from conf.settings import Settings
from gateway.responses import Playlist
from gateway.urls import SINGLE_RENDITION, is_rendition_name
from packager import playlists, reader
from packager.index import I64, INDEX_VERSION, MediaIndex
from packager.mp4 import read_index
from packager.mux import TIMELINE_OFFSET_SECONDS, SegmentBody, fmp4, ts
from packager.playlists import Format
from packager.segmenter import SegmenterConfig, SegmentPlan, plan

MEDIA_EXTENSIONS = (".mp4", ".m4v", ".mov")
# Bump when the bytes we write change for the same input and settings (part of every ETag).
OUTPUT_VERSION = 1
_FAILURE_WEIGHT = 1024
_RENDITION, _FAILURE = b"R", b"E"
_FAILURES: dict[str, type[BadMedia]] = {
    cls.__name__: cls for cls in (BadMedia, UnsupportedMedia, MisalignedLadder)
}


@dataclass(frozen=True, eq=False)
class Rendition:
    """One source file with its index and plan; the same file may be named differently by
    different URLs (``main`` of a file asset, ``720p`` of its folder), so it holds no name."""

    info: ObjectInfo
    index: MediaIndex
    plan: SegmentPlan
    _memo: dict[Hashable, Any] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        plan_bytes = sum(
            a.nbytes
            for a in (self.plan.frag_ms, self.plan.seg_frags, self.plan.video, self.plan.audio)
            if a is not None
        )
        return self.index.nbytes + plan_bytes * 4 + 4096

    def sizes(self, fmt: Format) -> I64:
        key = ("sizes", fmt)
        if key not in self._memo:
            writer = fmp4 if fmt == "fmp4" else ts
            self._memo[key] = writer.segment_sizes(self.index, self.plan)
        sizes: I64 = self._memo[key]
        return sizes

    @cached_property
    def init_segment(self) -> bytes:
        return fmp4.init_segment(self.index)

    def iframe_ranges(self, fmt: Format) -> list[list[tuple[int, int, int]]]:
        key = ("iframes", fmt)
        if key not in self._memo:
            writer = fmp4 if fmt == "fmp4" else ts
            self._memo[key] = [
                writer.iframe_ranges(self.index, self.plan, k) for k in range(self.plan.count)
            ]
        ranges: list[list[tuple[int, int, int]]] = self._memo[key]
        return ranges

    def variant(self, fmt: Format, url_suffix: str, uri_prefix: str) -> playlists.Variant:
        """``url_suffix`` is '' for the default format, else '-ts' / '-fmp4' as in the URL."""
        suffix = url_suffix
        iframe_lengths = None
        iframe_uri = None
        if self.index.video is not None:
            iframe_lengths = np.array(
                [length for seg in self.iframe_ranges(fmt) for _, _, length in seg], dtype=np.int64
            )
            iframe_uri = f"{uri_prefix}iframes{suffix}.m3u8"
        return playlists.variant(
            self.index,
            self.plan,
            self.sizes(fmt),
            f"{uri_prefix}index{suffix}.m3u8",
            iframe_uri,
            iframe_lengths,
        )

    def tag_parts(self) -> tuple[object, ...]:
        return (self.info.path, self.info.etag, self.info.size, INDEX_VERSION, OUTPUT_VERSION)


class _Failure(msgspec.Struct, frozen=True):
    kind: str
    message: str


class Library:
    def __init__(
        self,
        settings: Settings,
        storage: Storage,
        runner: BlockingRunner,
        cache: TieredCache,
        packaged: Callable[[str, float], object] = lambda fmt, seconds: None,
    ) -> None:
        self.settings = settings
        self.packaged = packaged  # metrics: each packaging's format and time
        self.storage = storage
        self.runner = runner
        self.cache = cache
        self.config = SegmenterConfig(settings.vod.target_duration, settings.vod.max_overrun)
        self.redis_segments = settings.cache.redis_segments

    @property
    def builds(self) -> int:
        """Index builds (parses of a source file's moov) by this process."""
        return self.cache.stats.builds.get("index", 0)

    @property
    def settings_key(self) -> tuple[object, ...]:
        return (self.config.target, self.config.max_overrun, TIMELINE_OFFSET_SECONDS)

    def tags(self, *paths: str) -> frozenset[str]:
        """Purge tags of objects made from ``paths``: theirs and every folder's above."""
        return tags_for(self.storage.uri, *paths)

    def tags_of_path(self, path: str) -> frozenset[str]:
        """The one tag a purge of ``path`` (a file or a folder) looks for."""
        return frozenset({keys.tag(self.storage.uri, path)})

    # Resolution ---------------------------------------------------------------------------

    async def _stat_rendition(self, asset: str, name: str, max_age: float) -> ObjectInfo:
        if name == SINGLE_RENDITION:
            info = await self.storage.stat(asset, max_age)
            if info.kind == "file":
                return info
        for extension in MEDIA_EXTENSIONS:
            try:
                info = await self.storage.stat(paths.join(asset, name + extension), max_age)
            except MediaNotFound:
                continue
            if info.kind == "file":
                return info
        raise MediaNotFound(f"rendition {name!r} of {asset} not found")

    async def rendition(self, asset: str, name: str, fresh: bool = True) -> Rendition:
        """``fresh``: ask the store for the file's version now (playlists); otherwise a stat
        answer up to ``storage.stat_max_age`` old will do (init and media segments)."""
        max_age = 0.0 if fresh else self.settings.storage.stat_max_age
        info = await self._stat_rendition(asset, name, max_age)
        return await self._load(info)

    async def ladder(self, asset: str) -> list[tuple[str, Rendition]]:
        """Every rendition of ``asset``, checked to share segment boundaries."""
        info = await self.storage.stat(asset)
        if info.kind == "file":
            return [(SINGLE_RENDITION, await self._load(info))]
        entries = await self.storage.list(asset)
        names: dict[str, str] = {}
        for entry in entries:
            stem, extension = posixpath.splitext(entry.name)
            # A file whose stem cannot be spelled as a rendition URL is not offered.
            media = entry.kind == "file" and extension.lower() in MEDIA_EXTENSIONS
            if media and is_rendition_name(stem):
                names.setdefault(stem, entry.name)
        if not names:
            raise MediaNotFound(f"{asset} holds no MP4 renditions")
        return await self.named_ladder([(n, paths.join(asset, f)) for n, f in names.items()])

    async def named_ladder(self, named: list[tuple[str, str]]) -> list[tuple[str, Rendition]]:
        """The renditions at these (name, library path) pairs, checked to share segment
        boundaries; each file's version is asked of the store now."""
        infos = await asyncio.gather(*(self.storage.stat(path) for _, path in named))
        renditions = []
        for (name, _), item in zip(named, infos, strict=True):
            if item.kind != "file":
                raise MediaNotFound(f"rendition {name} is missing")
            try:
                renditions.append((name, await self._load(item)))
            except BadMedia as exc:
                raise type(exc)(f"rendition {name}: {exc}") from None
        _check_alignment(renditions)
        return renditions

    async def file(self, path: str, fresh: bool) -> Rendition:
        """The rendition stored at ``path`` (see ``rendition`` for ``fresh``)."""
        max_age = 0.0 if fresh else self.settings.storage.stat_max_age
        info = await self.storage.stat(path, max_age)
        if info.kind != "file":
            raise MediaNotFound("rendition file is missing")
        return await self._load(info)

    # Building -----------------------------------------------------------------------------

    async def _load(self, info: ObjectInfo) -> Rendition:
        entry: Entry[Rendition | BadMedia] = Entry(
            kind="index",
            key=keys.key(
                "index",
                self.storage.uri,
                info.path,
                info.etag,
                info.size,
                INDEX_VERSION,
                self.settings_key,
            ),
            ttl=self.settings.cache.index_ttl,
            tags=self.tags(info.path),
            size=lambda v: v.nbytes if isinstance(v, Rendition) else _FAILURE_WEIGHT,
            encode=_encode_index,
            decode=lambda data: self._decode_index(info, data),
        )
        loaded = await self.cache.fetch(entry, lambda: self._build(info))
        if isinstance(loaded, BadMedia):
            # A fresh exception each time: one shared instance would gather every traceback.
            raise type(loaded)(str(loaded))
        return loaded

    async def _build(self, info: ObjectInfo) -> Rendition | BadMedia:
        max_moov = int(self.settings.server.max_moov_mb * 2**20)
        with tracing.span(tracing.INDEX_BUILD, path=info.path, size=info.size):
            try:
                index = await read_index(self.storage, info, self.runner, max_moov)
                segment_plan = await self.runner.run(plan, index, self.config)
            except BadMedia as exc:
                return exc  # cached like a result: a corrupt file is parsed once per version
        return Rendition(info, index, segment_plan)

    async def _decode_index(self, info: ObjectInfo, data: bytes) -> Rendition | BadMedia:
        if data[:1] == _FAILURE:
            failure = msgspec.msgpack.decode(data[1:], type=_Failure)
            return _FAILURES.get(failure.kind, BadMedia)(failure.message)
        if data[:1] != _RENDITION:
            raise ValueError("not an index value")
        index = MediaIndex.from_bytes(data[1:])
        # The plan is a pure function of the index: recomputed, not stored.
        return Rendition(info, index, await self.runner.run(plan, index, self.config))

    async def playlist(
        self, parts: tuple[object, ...], home: str, build: Callable[[], Awaitable[Playlist]]
    ) -> Playlist:
        """The playlist a URL (``parts``) names, built at most once per ``cache.playlist_ttl``:
        within that time it is answered without asking storage whether its sources changed."""
        ttl = self.settings.cache.playlist_ttl
        entry: Entry[Playlist] = Entry(
            kind="playlist",
            key=keys.key("playlist", self.storage.uri, parts, self.settings_key),
            ttl=ttl,
            tags=self.tags(home),
            size=lambda p: p.nbytes,
            encode=Playlist.to_bytes if ttl > 0 else None,
            decode=_decode_playlist,
            tags_of=lambda p: self.tags(*p.sources),
        )
        return await self.cache.fetch(entry, build)

    async def segment(self, rendition: Rendition, number: int, fmt: Format) -> bytes:
        k = rendition.plan.check(number)
        info = rendition.info
        entry: Entry[bytes] = Entry(
            kind="segment",
            key=keys.key(
                "segment", self.storage.uri, rendition.tag_parts(), self.settings_key, fmt, number
            ),
            ttl=self.settings.cache.segment_ttl,
            tags=self.tags(info.path),
            size=len,
            encode=bytes if self.redis_segments else None,
            decode=_as_is,
        )
        return await self.cache.fetch(entry, lambda: self._package(rendition, k, fmt))

    async def _package(self, rendition: Rendition, k: int, fmt: Format) -> bytes:
        start = time.perf_counter()
        gap, extra = self.settings.vod.read_coalesce_gap, self.settings.vod.read_overfetch
        index, segment_plan, info = rendition.index, rendition.plan, rendition.info
        body: SegmentBody
        with tracing.span(tracing.PACKAGING, path=info.path, segment=k, format=fmt):
            if fmt == "fmp4":
                with tracing.span(tracing.STORAGE_READ, path=info.path):
                    body = await reader.fmp4_segment(
                        self.storage, info, index, segment_plan, k, gap, extra
                    )
            else:
                with tracing.span(tracing.STORAGE_READ, path=info.path):
                    source = await reader.samples(
                        self.storage, info, index, segment_plan, k, gap, extra
                    )
                # TS does per-packet work: keep it off the event loop.
                body = await self.runner.run(ts.write_segment, index, segment_plan, k, source)
            # One buffer: what the response sends (granian wants one body message) and caches.
            data = bytes(body.join())
        self.packaged(fmt, time.perf_counter() - start)
        return data


def _encode_index(value: Rendition | BadMedia) -> bytes:
    if isinstance(value, BadMedia):
        return _FAILURE + msgspec.msgpack.encode(_Failure(type(value).__name__, str(value)))
    return _RENDITION + value.index.to_bytes()


async def _decode_playlist(data: bytes) -> Playlist:
    return Playlist.from_bytes(data)


async def _as_is(data: bytes) -> bytes:
    return data


def _check_alignment(renditions: list[tuple[str, Rendition]]) -> None:
    """Renditions of a ladder must cut segments at the same instants (within half a frame)."""
    video = [(n, r) for n, r in renditions if r.index.video is not None]
    if len(video) < 2:
        return
    ref_name, reference = max(
        video, key=lambda item: item[1].index.video.info.height if item[1].index.video else 0
    )
    ref_times = reference.plan.times_ms
    for name, other in video:
        if other is reference:
            continue
        track = other.index.video
        assert track is not None
        frame_ms = 1000 * float(np.median(track.durations)) / track.info.timescale
        tolerance = max(1.0, frame_ms / 2)
        times = other.plan.times_ms
        if times.shape != ref_times.shape:
            raise MisalignedLadder(
                f"rendition {name} has {times.shape[0] - 1} segments but "
                f"{ref_name} has {ref_times.shape[0] - 1}: keyframes are not aligned"
            )
        diff = np.abs(times - ref_times)
        if float(diff.max()) > tolerance:
            k = int(np.argmax(diff > tolerance))
            raise MisalignedLadder(
                f"rendition {name} is misaligned with {ref_name}: its segment {k + 1} "
                f"starts at {times[k] / 1000:.3f} s instead of {ref_times[k] / 1000:.3f} s"
            )
