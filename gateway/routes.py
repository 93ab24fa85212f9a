"""Path-mode playback endpoints: parse the URL, ask the library, answer with HTTP semantics."""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from html import escape
from importlib import resources
from urllib.parse import urlencode

from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from backends.errors import MediaNotFound
from backends.storage import deadline_scope
from gateway import responses, urls
from gateway.access import set_detail
from gateway.api.http import client_ip
from gateway.assets import Assets
from gateway.library import Library, Rendition
from gateway.responses import Playlist
from packager import playlists
from packager.mux import fmp4, ts
from packager.playlists import Format

TOKEN_PARAM = "token"  # noqa: S105 - the name of a query parameter, not a secret
_QUERY_CACHED = 1024  # longest query whose token is kept parsed (tokens: at most 512 chars)


def playback_token(request: Request) -> str | None:
    """The request's ``?token=``, if it has one."""
    query: bytes = request.scope["query_string"]
    if not query:
        return None
    if len(query) > _QUERY_CACHED:
        return request.query_params.get(TOKEN_PARAM)
    return _token_in(query)


@functools.lru_cache(maxsize=4096)
def _token_in(query: bytes) -> str | None:
    # A player repeats one query, its token, on every request: each one is parsed once.
    return QueryParams(query).get(TOKEN_PARAM)


def token_suffix(request: Request) -> str:
    """The query that child URIs carry on: the playback token, nothing else."""
    token = playback_token(request)
    return "?" + urlencode({TOKEN_PARAM: token}) if token else ""


class VodRoutes:
    """Playback of one URL space (``/vod/`` library paths or ``/v/`` catalog videos)."""

    def __init__(self, library: Library, assets: Assets) -> None:
        self.library = library
        self.assets = assets
        vod = library.settings.vod
        self.default_format: Format = vod.segment_format
        self._playlist_age = vod.playlist_max_age
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
        set_detail(request.scope, req.kind)  # metrics: "/vod/{path:path} segment", not one path
        fmt: Format = req.format or self.default_format
        token = playback_token(request)
        signed = await self.assets.admit(req.asset, token, client_ip(request))
        if req.kind in ("master", "media", "iframes"):
            return await self._playlist(request, req, fmt, signed)
        # A playlist checks the file's version when it is built; media requests may reuse a
        # recent answer (a replaced file is still caught: reads are conditional on the version
        # planned for, and cached segments are keyed by it).
        rendition = await self.assets.rendition(req.asset, req.rendition, fresh=False)
        if req.kind == "init":
            return await self._init(request, rendition)
        return await self._segment(request, rendition, req.number, fmt)

    async def _playlist(
        self, request: Request, req: urls.PlaybackRequest, fmt: Format, signed: bool
    ) -> Response:
        suffix = token_suffix(request)
        url_suffix = f"-{req.format}" if req.format else ""
        builders = {"master": self._master, "media": self._media, "iframes": self._iframes}
        build = builders[req.kind]
        item = await self.library.playlist(
            (self.assets.scope, req.kind, req.asset, req.rendition, fmt, url_suffix, suffix),
            self.assets.home(req.asset),
            lambda: build(req, fmt, url_suffix, suffix),
        )
        # A playlist fetched with a token carries it in every URI (signed or not: a public
        # video asked for with one): no shared cache may keep it, or a CDN keying on the path
        # alone would hand one viewer's token to the next.
        private = signed or bool(suffix)
        cache = (
            f"private, max-age={min(60, self._playlist_age)}" if private else self.playlist_cache
        )
        return responses.playlist(request, item, cache, self.gzip)

    def _tag(self, *parts: object) -> str:
        return responses.etag(*parts, self.library.settings_key)

    async def _master(
        self, req: urls.PlaybackRequest, fmt: Format, url_suffix: str, suffix: str
    ) -> Playlist:
        ladder = await self.assets.ladder(req.asset)
        tag = self._tag(
            "master", fmt, url_suffix, suffix, tuple((n, r.tag_parts()) for n, r in ladder)
        )
        variants = [r.variant(fmt, url_suffix, f"{name}/") for name, r in ladder]
        text = playlists.build_master(variants, suffix)
        return Playlist(text, tag, tuple(r.info.path for _, r in ladder))

    async def _media(
        self, req: urls.PlaybackRequest, fmt: Format, url_suffix: str, suffix: str
    ) -> Playlist:
        rendition = await self.assets.rendition(req.asset, req.rendition, fresh=True)
        tag = self._tag("media", fmt, suffix, rendition.tag_parts())
        text = playlists.build_media(rendition.plan, fmt, suffix)
        return Playlist(text, tag, (rendition.info.path,))

    async def _iframes(
        self, req: urls.PlaybackRequest, fmt: Format, url_suffix: str, suffix: str
    ) -> Playlist:
        rendition = await self.assets.rendition(req.asset, req.rendition, fresh=True)
        if rendition.index.video is None:
            raise MediaNotFound("this rendition has no video, so no I-frame playlist")
        tag = self._tag("iframes", fmt, suffix, rendition.tag_parts())
        psi = ts.PSI_SIZE if fmt == "ts" else 0
        ranges = rendition.iframe_ranges(fmt)
        text = playlists.build_iframes(rendition.plan, fmt, ranges, psi, suffix)
        return Playlist(text, tag, (rendition.info.path,))

    async def _init(self, request: Request, rendition: Rendition) -> Response:
        data = rendition.init_segment

        async def produce() -> bytes:
            return data

        return await responses.media(
            request,
            size=len(data),
            tag=self._tag("init", rendition.tag_parts()),
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
            tag=self._tag("seg", fmt, number, rendition.tag_parts()),
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
