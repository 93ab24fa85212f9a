"""Thumbnail URLs of catalog videos over HTTP: on-demand frames (cached, coalesced), the
worker's poster, storyboard and sprite sheets, bad parameters, and private videos, which answer
403 on every playback URL (playlist, segment, thumbnail) without their signed token."""

from __future__ import annotations

import asyncio
import io
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import av
import httpx
import msgspec
import numpy as np
import pytest

from auth.playback import PlaybackSigner, for_video
from backends.blocking import BlockingRunner
from backends.catalog import Catalog, NewVideo, Rendition, VideoChanges, engines, upgrade
from backends.storage import open_storage
from conf import Settings
from conf.settings import StorageSettings
from gateway.thumbnails import stored_path
from packager import thumbnails
from tests.conftest import serving, settings_for
from tests.media import MediaLibrary
from tests.metrics import scrape

pytestmark = pytest.mark.anyio

SECRET = "thumbnail-playback-key-" + "t" * 20
SIGNER = PlaybackSigner({"k1": SECRET.encode()}, "k1")
LADDER = (("240p", 400_000), ("180p", 200_000))  # the smallest, 180p, is 320x180


@dataclass(frozen=True)
class Videos:
    settings: Settings
    library: Path
    public: str
    private: str
    bare: str  # ready, but the worker has made no thumbnails for it
    pending: str  # still uploading: nothing to show


async def _seed(library: Path, url: str, ladder: Path) -> dict[str, str]:
    engine = engines.create(url)
    await upgrade(engine)
    catalog = Catalog(engine)
    storage = open_storage(StorageSettings(library=str(library)), BlockingRunner(2))
    ids = {}
    try:
        owner = await catalog.create_user("thumbs@example.com")
        for name in ("public", "private", "bare", "pending"):
            new = NewVideo(title=name, privacy="private" if name == "private" else "public")
            video = await catalog.create_video(owner.id, new)
            ids[name] = video.id
            if name == "pending":
                continue
            folder = library / "videos" / video.id
            folder.mkdir(parents=True)
            for rendition, _ in LADDER:
                shutil.copy(ladder / f"{rendition}.mp4", folder / f"{rendition}.mp4")
            renditions = [
                Rendition(name=n, path=f"videos/{video.id}/{n}.mp4", bandwidth=b) for n, b in LADDER
            ]
            await catalog.set_renditions(video.id, renditions)
            await catalog.update_video(video.id, VideoChanges(status="ready"))
            if name == "bare":
                continue
            # What the worker does: make the set from the smallest rung, store every file.
            with tempfile.TemporaryDirectory() as work:
                made = thumbnails.make_set(folder / "180p.mp4", work, interval=2.0)
                for file in made.names:
                    data = (Path(work) / file).read_bytes()
                    await storage.write(stored_path(video.id, file), _once(data))
    finally:
        await storage.close()
        await catalog.close()
    return ids


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


@pytest.fixture(scope="module")
def videos(media: MediaLibrary, tmp_path_factory: pytest.TempPathFactory) -> Videos:
    folder = tmp_path_factory.mktemp("thumbnail-routes")
    library = folder / "library"
    library.mkdir()
    url = f"sqlite:///{folder}/catalog.sqlite3"
    ids = asyncio.run(_seed(library, url, media.ladder()))
    config = msgspec.to_builtins(settings_for(library))
    config["catalog"]["url"] = url
    config["auth"]["playback_secret"] = SECRET
    settings = msgspec.convert(config, Settings)
    return Videos(settings, library, ids["public"], ids["private"], ids["bare"], ids["pending"])


@pytest.fixture
async def http(videos: Videos) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(videos.settings) as (client, _):
        yield client


def picture(jpeg: bytes) -> np.ndarray[Any, Any]:
    with av.open(io.BytesIO(jpeg), "r") as container:
        return next(container.decode(video=0)).to_ndarray(format="rgb24")


def sign(video_id: str) -> str:
    return SIGNER.sign(for_video(video_id), int(time.time()) + 600)


async def builds(http: httpx.AsyncClient) -> float:
    """Thumbnails made or read from storage after missing every cache tier (they are counted
    with segments: the same kind of cached media bytes)."""
    return (await scrape(http)).value("clipsync_cache_builds_total", kind="segment")


def assert_problem(r: httpx.Response, status: int, detail: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert detail in r.json()["detail"]


async def test_on_demand_thumbnail_is_made_once_and_cached(
    http: httpx.AsyncClient, videos: Videos
) -> None:
    url = f"/v/{videos.public}/thumbnail.jpg?time=3&width=160"
    before = await builds(http)
    r = await http.get(url)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/jpeg"
    assert r.headers["cache-control"] == "public, max-age=60"
    assert r.headers["content-length"] == str(len(r.content))
    assert picture(r.content).shape == (90, 160, 3)
    # Decoded from the smallest rendition's keyframe at or before 3 s (the one at 2 s).
    smallest = videos.library / "videos" / videos.public / "180p.mp4"
    assert r.content == thumbnails.frame_at(smallest, 2, 160)
    assert await builds(http) == before + 1

    again = await http.get(url)
    same_keyframe = await http.get(f"/v/{videos.public}/thumbnail.jpg?width=160&time=2.5")
    assert again.content == same_keyframe.content == r.content
    assert again.headers["etag"] == same_keyframe.headers["etag"] == r.headers["etag"]
    assert await builds(http) == before + 1  # from the cache, not decoded again

    revalidated = await http.get(url, headers={"if-none-match": r.headers["etag"]})
    assert revalidated.status_code == 304
    head = await http.head(url)
    assert head.status_code == 200
    assert head.headers["content-length"] == str(len(r.content))
    assert head.content == b""

    # Identical concurrent misses: one decode answers all of them.
    wanted = f"/v/{videos.public}/thumbnail.jpg?time=7&width=200"
    answers = await asyncio.gather(*(http.get(wanted) for _ in range(6)))
    assert {a.status_code for a in answers} == {200}
    assert len({a.content for a in answers}) == 1
    assert picture(answers[0].content).shape == (112, 200, 3)
    assert await builds(http) == before + 2
    assert answers[0].content != r.content  # 6 s is another picture than 2 s

    default = await http.get(f"/v/{videos.public}/thumbnail.jpg")
    assert picture(default.content).shape == (180, 320, 3)
    past_end = await http.get(f"/v/{videos.public}/thumbnail.jpg?time=3600&width=160")
    assert past_end.content == thumbnails.frame_at(smallest, 9.9, 160)  # the last keyframe


@pytest.mark.parametrize(
    ("query", "detail"),
    [
        ("time=abc", "time must be a number of seconds"),
        ("time=-1", "time must not be negative"),
        ("time=nan", "finite"),
        ("time=inf", "finite"),
        ("time=1e3", "plain seconds"),
        ("time=99999999", "at most 604800 seconds"),
        ("width=10", "width must be a whole number of pixels from 32 to 1920"),
        ("width=5000", "from 32 to 1920"),
        ("width=abc", "from 32 to 1920"),
        ("width=", "from 32 to 1920"),
    ],
)
async def test_bad_parameters_are_400(
    http: httpx.AsyncClient, videos: Videos, query: str, detail: str
) -> None:
    r = await http.get(f"/v/{videos.public}/thumbnail.jpg?{query}")
    assert_problem(r, 400, detail)


async def test_worker_thumbnails_are_served(http: httpx.AsyncClient, videos: Videos) -> None:
    base = f"/v/{videos.public}/"
    poster = await http.get(base + "poster.jpg")
    assert poster.status_code == 200, poster.text
    assert poster.headers["content-type"] == "image/jpeg"
    assert poster.headers["cache-control"] == "public, max-age=60"
    assert picture(poster.content).shape == (180, 320, 3)
    board = await http.get(base + "storyboard.vtt")
    assert board.status_code == 200
    assert board.headers["content-type"] == "text/vtt; charset=utf-8"
    assert board.text.startswith("WEBVTT\n")
    targets = [line for line in board.text.splitlines() if "#xywh=" in line]
    assert len(targets) == 5  # 10 s, a tile every 2 s
    assert targets[0] == "thumbs/sprite-1.jpg#xywh=0,0,160,90"
    for target in {t.split("#")[0] for t in targets}:
        sheet = await http.get(urljoin(str(board.url), target))  # as a player resolves it
        assert sheet.status_code == 200, target
        assert sheet.headers["content-type"] == "image/jpeg"
        assert picture(sheet.content).shape == (90, 800, 3)  # one row of five tiles
    revalidated = await http.get(
        base + "poster.jpg", headers={"if-none-match": poster.headers["etag"]}
    )
    assert revalidated.status_code == 304
    # One spelling per sheet, and only the sheets there are.
    for name in ("sprite-01.jpg", "sprite-2.jpg", "sprite-0.jpg", "sprite-x.jpg"):
        assert_problem(await http.get(base + "thumbs/" + name), 404, "sprite sheet")


async def test_missing_videos_and_thumbnails_are_404(
    http: httpx.AsyncClient, videos: Videos
) -> None:
    for video in ("nope", videos.pending):
        for name in ("thumbnail.jpg", "poster.jpg", "storyboard.vtt", "thumbs/sprite-1.jpg"):
            r = await http.get(f"/v/{video}/{name}")
            assert_problem(r, 404, "not playable")
    bare = f"/v/{videos.bare}/"
    assert_problem(await http.get(bare + "poster.jpg"), 404, "has no poster yet")
    assert_problem(await http.get(bare + "storyboard.vtt"), 404, "has no storyboard yet")
    assert_problem(await http.get(bare + "thumbs/sprite-1.jpg"), 404, "no sprite sheet 1 yet")
    # Frames on demand need no worker: only a rendition.
    assert (await http.get(bare + "thumbnail.jpg?time=1")).status_code == 200
    # Playback URLs of the video are still playback's.
    assert (await http.get(bare + "master.m3u8")).status_code == 200


async def test_private_video_needs_its_signed_token_everywhere(
    http: httpx.AsyncClient, videos: Videos
) -> None:
    base = f"/v/{videos.private}/"
    paths = (
        "master.m3u8",
        "180p/index.m3u8",
        "180p/seg-1.m4s",
        "thumbnail.jpg?time=1&width=160",
        "poster.jpg",
        "storyboard.vtt",
        "thumbs/sprite-1.jpg",
        "thumbs/sprite-99.jpg",  # refused before anything is looked up
    )
    token = sign(videos.private)
    wrong = {
        "invalid playback token": token[:-2] + ("AA" if not token.endswith("AA") else "BB"),
        "not valid for this video": sign(videos.public),
        "expired": SIGNER.sign(for_video(videos.private), int(time.time()) - 1),
    }
    for path in paths:
        joiner = "&" if "?" in path else "?"
        assert_problem(await http.get(base + path), 403, "signed playback URL")
        assert (await http.head(base + path)).status_code == 403
        for reason, bad in wrong.items():
            r = await http.get(f"{base}{path}{joiner}token={bad}")
            assert_problem(r, 403, reason)
        if path.endswith("sprite-99.jpg"):
            continue
        r = await http.get(f"{base}{path}{joiner}token={token}")
        assert r.status_code == 200, (path, r.text)
        if not path.endswith(".m4s"):  # segments keep playback's own caching
            assert r.headers["cache-control"].startswith("private"), path

    # The storyboard hands its token on to every sheet it names, as playlists do.
    board = await http.get(f"{base}storyboard.vtt?token={token}")
    targets = [line for line in board.text.splitlines() if "#xywh=" in line]
    assert targets[0] == f"thumbs/sprite-1.jpg?token={token}#xywh=0,0,160,90"
    for target in targets:
        sheet = await http.get(urljoin(str(board.url), target.split("#")[0]))
        assert sheet.status_code == 200, target
        assert sheet.headers["cache-control"].startswith("private")
