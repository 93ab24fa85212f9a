"""View beacons from players, owner statistics and trending videos."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from backends.catalog import Catalog, views
from backends.errors import Forbidden, NotFound
from gateway.api import http
from gateway.api.models import Accepted, DayOut, VideoPage, VideoStats, ViewBeacon, video_out
from gateway.api.videos import Videos
from gateway.assets import CatalogAssets


class Analytics:
    def __init__(
        self,
        catalog: Catalog,
        videos: Videos,
        playback: CatalogAssets,
        aggregator: views.ViewAggregator,
    ) -> None:
        self.catalog = catalog
        self.videos = videos
        self.playback = playback
        self.aggregator = aggregator

    async def beacon(self, request: Request) -> Response:
        beacon = await http.body(request, ViewBeacon)
        video_id = request.path_params["video_id"]
        # The cached playback lookup: a beacon reads no more of the database than a segment.
        await self.playback.playable(video_id, media=False, public_only=True)
        await self.aggregator.beacon(
            video_id, beacon.session, beacon.event, round(beacon.watched * 1000)
        )
        return http.json(Accepted(accepted=True), 202)

    async def stats(self, request: Request) -> Response:
        who = await self.videos.me(request)
        video = await self.catalog.get_video(request.path_params["video_id"])
        if video is None or (video.owner_id != who.user_id and not who.admin):
            if video is not None and video.privacy != "private":
                raise Forbidden("only the owner or an admin may see a video's statistics")
            raise NotFound("no such video")
        days = http.integer(request, "days", 30, 1, 366)
        rows = await views.daily(self.catalog, video.id, days)
        total_views = sum(r.views for r in rows)
        completions = sum(r.completions for r in rows)
        stats = VideoStats(
            views=total_views,
            watch_seconds=sum(r.watch_ms for r in rows) / 1000,
            completions=completions,
            completion_rate=completions / total_views if total_views else 0.0,
            days=[
                DayOut(
                    day=r.day.isoformat(),
                    views=r.views,
                    watch_seconds=r.watch_ms / 1000,
                    completions=r.completions,
                )
                for r in rows
            ],
        )
        return http.json(stats)

    async def trending(self, request: Request) -> Response:
        days = http.integer(request, "days", 7, 1, 90)
        limit = http.integer(request, "limit", 20, 1, 100)
        ids = await views.trending(self.catalog, days, limit)
        found = await self.catalog.get_videos(ids)
        return http.json(VideoPage(items=[video_out(v) for v in found], next_cursor=None))
