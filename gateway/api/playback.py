"""Signed playback URLs: ``POST /api/v1/videos/{id}/playback``."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import Response

from auth.playback import PlaybackSigner, for_video
from backends.errors import Forbidden, InvalidRequest
from gateway.api import http
from gateway.api.account_models import PlaybackOut, PlaybackRequest
from gateway.api.videos import Videos


class PlaybackGrants:
    def __init__(self, videos: Videos, signer: PlaybackSigner | None, ttl: int) -> None:
        self.videos = videos
        self.signer = signer
        self.ttl = ttl

    async def grant(self, request: Request) -> Response:
        """A signed master-playlist URL for a video this caller may see (a private one: its
        owner or an admin), optionally bound to the caller's address or a network."""
        video, _ = await self.videos.visible(request)
        wanted = await http.body(request, PlaybackRequest)
        if self.signer is None:
            raise Forbidden("signed playback is not configured on this gateway (auth.jwt_secret)")
        cidr = wanted.cidr
        if wanted.bind_ip:
            if cidr is not None:
                raise InvalidRequest("give bind_ip or cidr, not both")
            cidr = http.client_ip(request)
            if cidr is None:
                raise InvalidRequest("this connection has no client address to bind to")
        expires = int(time.time()) + (wanted.ttl or self.ttl)
        try:
            token = self.signer.sign(for_video(video.id), expires, cidr)
        except ValueError as exc:
            raise InvalidRequest(f"cidr: {exc}") from None
        path = f"/v/{video.id}/master.m3u8?token={token}"
        out = PlaybackOut(
            url=str(request.base_url).rstrip("/") + path,
            token=token,
            expires_at=datetime.fromtimestamp(expires, UTC),
        )
        return http.json(out, 201)
