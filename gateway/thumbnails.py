"""Thumbnail endpoints of catalog videos: frames on demand, the poster, the storyboard.

  /v/{id}/thumbnail.jpg?time=&width=   the keyframe at or before ``time`` of the smallest
                                       rendition, decoded from that one sample, cached
  /v/{id}/poster.jpg                   made by the worker (``packager.thumbnails.make_set``)
  /v/{id}/storyboard.vtt               and stored under ``videos/{id}/thumbs/``; the VTT's
  /v/{id}/thumbs/sprite-{n}.jpg        cues are relinked to these URLs (and the token)

Every endpoint asks ``Assets.admit`` before anything else, in one place (``_guarded``): a
private video answers 403 without a valid signed token, exactly as its playlists and segments
do, and signed answers are ``private`` (a shared cache keying on the path must not keep them).
None of these URLs names a version of its bytes (a repeated job or a finished ladder remakes
them), so they are cached like playlists, with ETags that make revalidation cheap.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from backends import paths
from backends.cache import Entry, keys
from backends.catalog.records import storage_folder
from backends.errors import MediaNotFound
from backends.storage import ObjectInfo, deadline_scope
from gateway import responses
from gateway.api.http import client_ip
from gateway.assets import CatalogAssets
from gateway.library import Library, Rendition
from gateway.routes import playback_token, token_suffix
from packager import thumbnails
from packager.thumbnails import POSTER, STORYBOARD

JPEG, VTT = "image/jpeg", "text/vtt; charset=utf-8"
FOLDER = "thumbs"  # beside the renditions: videos/{id}/thumbs/ (DESIGN.md's storage layout)
# Thumbnails are media bytes like segments: they share the segment budget, TTL and Redis use.
CACHE_KIND = "segment"
_SHEET_NUMBER = re.compile(r"[1-9][0-9]{0,5}")

Serve = Callable[[Request, str, bool], Awaitable[Response]]


def stored_path(video_id: str, name: str) -> str:
    """Where the worker puts file ``name`` of a video's ``ThumbnailSet`` in storage."""
    return paths.clean(f"{storage_folder(video_id)}/{FOLDER}/{name}")


class ThumbnailRoutes:
    def __init__(self, library: Library, assets: CatalogAssets) -> None:
        self.library = library
        self.assets = assets
        vod = library.settings.vod
        self.public_cache = f"public, max-age={vod.playlist_max_age}"
        self.private_cache = f"private, max-age={min(60, vod.playlist_max_age)}"
        self.deadline = library.settings.storage.deadline
        self._stat_age = library.settings.storage.stat_max_age

    def routes(self) -> list[Route]:
        """To be registered before the ``/v/{path:path}`` catch-all of playback."""
        get = ["GET", "HEAD"]
        return [
            Route("/v/{video_id}/thumbnail.jpg", self._guarded(self.thumbnail), methods=get),
            Route("/v/{video_id}/poster.jpg", self._guarded(self.poster), methods=get),
            Route("/v/{video_id}/storyboard.vtt", self._guarded(self.storyboard), methods=get),
            Route(
                "/v/{video_id}/" + FOLDER + "/sprite-{number}.jpg",
                self._guarded(self.sprite),
                methods=get,
            ),
        ]

    def _guarded(self, serve: Serve) -> Callable[[Request], Awaitable[Response]]:
        """``serve`` once the request may see the video (``signed``: it needed a token)."""

        async def endpoint(request: Request) -> Response:
            with deadline_scope(self.deadline):
                video_id = request.path_params["video_id"]
                token = playback_token(request)
                signed = await self.assets.admit(video_id, token, client_ip(request))
                return await serve(request, video_id, signed)

        return endpoint

    # On demand ----------------------------------------------------------------------------

    async def thumbnail(self, request: Request, video_id: str, signed: bool) -> Response:
        named = await self.assets.playable(video_id)
        _, path = named[-1]  # highest bandwidth first: the last is the smallest picture
        rendition = await self.library.file(path, fresh=False)
        track = rendition.index.video
        if track is None:
            raise MediaNotFound("this video has no picture to make a thumbnail of")
        seconds, width = thumbnails.parse_request(
            request.query_params, thumbnails.track_seconds(track)
        )
        # Every time within one GOP names the same picture: one cache entry, one ETag.
        sample = thumbnails.keyframe_at(track, seconds)
        tag = responses.etag("thumbnail", rendition.tag_parts(), sample, width, thumbnails.VERSION)
        return await self._send(
            request, tag, JPEG, signed, lambda: self._frame(rendition, sample, width)
        )

    async def _frame(self, rendition: Rendition, sample: int, width: int) -> bytes:
        library = self.library
        entry: Entry[bytes] = Entry(
            kind=CACHE_KIND,
            key=keys.key(
                "thumbnail",
                library.storage.uri,
                rendition.tag_parts(),
                sample,
                width,
                thumbnails.VERSION,
            ),
            ttl=library.settings.cache.segment_ttl,
            tags=library.tags(rendition.info.path),
            size=len,
            encode=bytes if library.redis_segments else None,
            decode=_as_is,
        )
        return await library.cache.fetch(entry, lambda: self._decode(rendition, sample, width))

    async def _decode(self, rendition: Rendition, sample: int, width: int) -> bytes:
        track = rendition.index.video
        assert track is not None
        info, start = rendition.info, int(track.offset[sample])
        # The keyframe's own bytes are all it takes: one ranged read, whatever the storage.
        data = await self.library.storage.read_range(
            info.path, start, start + int(track.size[sample]), info.etag
        )
        rotation = thumbnails.rotation_of(track.info.matrix)
        return await self.library.runner.run(
            thumbnails.keyframe_jpeg,
            track.info.codec,
            track.info.codec_config,
            data,
            width,
            rotation,
        )

    # Made by the worker -------------------------------------------------------------------

    async def poster(self, request: Request, video_id: str, signed: bool) -> Response:
        info = await self._stat(video_id, POSTER, "poster")
        return await self._send(request, _stored_tag(info), JPEG, signed, lambda: self._read(info))

    async def sprite(self, request: Request, video_id: str, signed: bool) -> Response:
        number = request.path_params["number"]
        if not _SHEET_NUMBER.fullmatch(number):  # one spelling per sheet: no leading zeros
            raise MediaNotFound("no such sprite sheet")
        name = thumbnails.sprite_name(int(number))
        info = await self._stat(video_id, name, f"sprite sheet {number}")
        return await self._send(request, _stored_tag(info), JPEG, signed, lambda: self._read(info))

    async def storyboard(self, request: Request, video_id: str, signed: bool) -> Response:
        info = await self._stat(video_id, STORYBOARD, "storyboard")
        suffix = token_suffix(request)

        async def relinked() -> bytes:
            text = (await self._read(info)).decode("utf-8", errors="replace")
            # Stored cues name sheets beside the VTT; served here, they live under thumbs/.
            return thumbnails.relink(text, f"{FOLDER}/", suffix).encode("utf-8")

        tag = responses.etag("storyboard", _stored_tag(info), suffix)
        return await self._send(request, tag, VTT, signed, relinked)

    async def _stat(self, video_id: str, name: str, what: str) -> ObjectInfo:
        await self.assets.playable(video_id, media=False)
        storage = self.library.storage
        try:
            info = await storage.stat(stored_path(video_id, name), self._stat_age)
        except MediaNotFound:
            info = None
        if info is None or info.kind != "file":
            raise MediaNotFound(
                f"this video has no {what} yet: thumbnails are made when it is processed"
            )
        return info

    async def _read(self, info: ObjectInfo) -> bytes:
        library = self.library
        entry: Entry[bytes] = Entry(
            kind=CACHE_KIND,
            key=keys.key("thumbfile", library.storage.uri, info.path, info.etag, info.size),
            ttl=library.settings.cache.segment_ttl,
            tags=library.tags(info.path),
            size=len,
            encode=bytes if library.redis_segments else None,
            decode=_as_is,
        )
        return await library.cache.fetch(
            entry, lambda: library.storage.read_range(info.path, 0, info.size, info.etag)
        )

    # HTTP ---------------------------------------------------------------------------------

    async def _send(
        self,
        request: Request,
        tag: str,
        content_type: str,
        signed: bool,
        produce: Callable[[], Awaitable[bytes]],
    ) -> Response:
        cache_control = self.private_cache if signed else self.public_cache
        unchanged = responses.not_modified(request, tag, cache_control)
        if unchanged is not None:
            return unchanged  # no decode, no read
        body = await produce()
        return await responses.media(
            request,
            size=len(body),
            tag=tag,
            content_type=content_type,
            cache_control=cache_control,
            produce=_ready(body),
        )


def _stored_tag(info: ObjectInfo) -> str:
    return responses.etag("thumbs", info.path, info.etag, info.size)


def _ready(data: bytes) -> Callable[[], Awaitable[bytes]]:
    async def produce() -> bytes:
        return data

    return produce


async def _as_is(data: bytes) -> bytes:
    return data
