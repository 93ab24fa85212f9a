"""Path-mode playback endpoints: parse the URL, ask the library, answer with HTTP semantics."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from html import escape
from importlib import resources
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from backends.errors import MediaNotFound
from backends.storage import deadline_scope
from gateway import responses, urls
from gateway.library import Library, Rendition
from gateway.responses import Playlist
from packager import playlists
from packager.mux import fmp4, ts
from packager.playlists import Format

TOKEN_PARAM = "token"  # noqa: S105 - the name of a query parameter, not a secret


def _suffix(request: Request) -> str:
    """The query that child URIs carry on: the playback token, nothing else."""
    token = request.query_params.get(TOKEN_PARAM)
    return "?" + urlencode({TOKEN_PARAM: token}) if token else ""


class VodRoutes:
    def __init__(self, library: Library) -> None:
        self.library = library
        vod = library.settings.vod
        self.default_format: Format = vod.segment_format
        self.playlist_cache = f"public, max-age={vod.playlist_max_age}"
        self.media_cache = responses.IMMUTABLE.format(age=vod.segment_max_age)
        self.gzip = vod.gzip_playlists
        self.deadline = library.settings.storage.deadline

    async def handle(self, request: Request) -> Response:
        # Everything this request asks of storage, retries included, ends by the deadline.
        with deadline_scope(self.deadline):
            return await self._handle(request)

    async def _handle(self, request: Request) -> Response:
        req = urls.parse(request.path_params["path"])
        fmt: Format = req.format or self.default_format
        if req.kind == "master":
            return await self._master(request, req, fmt)
        # A playlist always checks the file's version; media requests may reuse a recent answer
        # (a replaced file is still caught: reads are conditional on the version planned for).
        playlist = req.kind in ("media", "iframes")
        rendition = await self.library.rendition(req.asset, req.rendition, fresh=playlist)
        if req.kind == "media":
            return self._media_playlist(request, rendition, fmt)
        if req.kind == "iframes":
            return self._iframe_playlist(request, rendition, fmt)
        if req.kind == "init":
            return await self._init(request, rendition)
        return await self._segment(request, rendition, req.number, fmt)

    def _playlist(
        self, request: Request, parts: tuple[object, ...], build: Callable[[], str]
    ) -> Response:
        tag = responses.etag(*parts, self.library.settings_key)
        key = ("playlist", tag)
        item = self.library.cached_playlist(key)
        if not isinstance(item, Playlist):
            item = Playlist(build(), tag)
            self.library.store_playlist(key, item, item.nbytes)
        return responses.playlist(request, item, self.playlist_cache, self.gzip)

    async def _master(self, request: Request, req: urls.PlaybackRequest, fmt: Format) -> Response:
        ladder = await self.library.ladder(req.asset)
        suffix = _suffix(request)
        url_suffix = f"-{req.format}" if req.format else ""
        parts = ("master", fmt, url_suffix, suffix, tuple((n, r.tag_parts()) for n, r in ladder))

        def build() -> str:
            variants = [r.variant(fmt, url_suffix, f"{name}/") for name, r in ladder]
            return playlists.build_master(variants, suffix)

        return self._playlist(request, parts, build)

    def _media_playlist(self, request: Request, rendition: Rendition, fmt: Format) -> Response:
        suffix = _suffix(request)
        parts = ("media", fmt, suffix, rendition.tag_parts())
        return self._playlist(
            request, parts, lambda: playlists.build_media(rendition.plan, fmt, suffix)
        )

    def _iframe_playlist(self, request: Request, rendition: Rendition, fmt: Format) -> Response:
        if rendition.index.video is None:
            raise MediaNotFound("this rendition has no video, so no I-frame playlist")
        suffix = _suffix(request)
        parts = ("iframes", fmt, suffix, rendition.tag_parts())

        def build() -> str:
            psi = ts.PSI_SIZE if fmt == "ts" else 0
            ranges = rendition.iframe_ranges(fmt)
            return playlists.build_iframes(rendition.plan, fmt, ranges, psi, suffix)

        return self._playlist(request, parts, build)

    async def _init(self, request: Request, rendition: Rendition) -> Response:
        data = rendition.init_segment

        async def produce() -> bytes:
            return data

        return await responses.media(
            request,
            size=len(data),
            tag=responses.etag("init", rendition.tag_parts(), self.library.settings_key),
            content_type=fmp4.content_type(rendition.index),
            cache_control=self.media_cache,
            produce=produce,
        )

    async def _segment(
        self, request: Request, rendition: Rendition, number: int, fmt: Format
    ) -> Response:
        k = rendition.plan.check(number)
        writer = fmp4 if fmt == "fmp4" else ts
        return await responses.media(
            request,
            size=int(rendition.sizes(fmt)[k]),
            tag=responses.etag(
                "seg", fmt, number, rendition.tag_parts(), self.library.settings_key
            ),
            content_type=writer.content_type(rendition.index),
            cache_control=self.media_cache,
            produce=lambda: self.library.segment(rendition, number, fmt),
        )


def player_page(hlsjs_url: str) -> Callable[[Request], Awaitable[Response]]:
    template = resources.files("gateway").joinpath("static/player.html").read_text("utf-8")

    async def page(request: Request) -> Response:
        src = request.query_params.get("src", "/vod/demo/master.m3u8")
        html = template.replace("{{HLSJS}}", escape(hlsjs_url, quote=True))
        # JSON is the right escaping inside <script>; "<" is escaped so "</script>" cannot close it.
        html = html.replace("{{SRC_JSON}}", json.dumps(src).replace("<", "\\u003c"))
        return HTMLResponse(html, headers={"cache-control": "no-store"})

    return page


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"}, headers={"cache-control": "no-store"})
