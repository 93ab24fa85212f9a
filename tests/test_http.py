"""HTTP semantics of the playback routes, in-process (no sockets)."""

from __future__ import annotations

import asyncio
import gzip
import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import m3u8
import pytest

from tests.backends import BACKENDS, Libraries, gateway
from tests.conftest import app_client
from tests.media import CORRUPT, MediaLibrary


@pytest.fixture(params=BACKENDS)
async def client(
    request: pytest.FixtureRequest, libraries: Libraries
) -> AsyncIterator[httpx.AsyncClient]:
    """The suite runs over every storage backend, each holding the same library."""
    async with gateway(libraries.settings(request.param)) as (http, _):
        yield http


pytestmark = pytest.mark.anyio

MEDIA = "h264_30fps_bframes"


def url(name: str, tail: str) -> str:
    return f"/vod/{name}.mp4/{tail}"


async def test_master_single_file(client: httpx.AsyncClient, media: MediaLibrary) -> None:
    media.good(MEDIA)
    r = await client.get(url(MEDIA, "master.m3u8"))
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/vnd.apple.mpegurl"
    assert r.headers["cache-control"] == "public, max-age=60"
    master = m3u8.loads(r.text)
    assert master.is_variant
    (variant,) = master.playlists
    assert variant.uri == "main/index.m3u8"
    info = variant.stream_info
    # High profile (0x64), level from the encoder; the level itself is checked against ffprobe
    # in test_playlists.
    assert re.fullmatch(r"avc1\.6400[0-9a-f]{2},mp4a\.40\.2", info.codecs)
    assert info.resolution == (320, 180)
    assert info.frame_rate == 30.0
    assert 0 < info.average_bandwidth <= info.bandwidth
    assert [p.uri for p in master.iframe_playlists] == ["main/iframes.m3u8"]
    assert "#EXT-X-INDEPENDENT-SEGMENTS" in r.text


async def test_a_playlist_carrying_a_token_is_never_shared(
    client: httpx.AsyncClient, media: MediaLibrary
) -> None:
    """A public video asked for with ?token=: the token goes into every URI, so a CDN must not
    hand that playlist to the next viewer (conf/cdn.md)."""
    media.good(MEDIA)
    for tail in ("master.m3u8", "main/index.m3u8"):
        with_token = await client.get(url(MEDIA, tail) + "?token=someone-elses")
        assert with_token.status_code == 200
        assert with_token.headers["cache-control"].startswith("private"), tail
        assert "token=someone-elses" in with_token.text
        plain = await client.get(url(MEDIA, tail))
        assert plain.headers["cache-control"] == "public, max-age=60", tail


async def test_ladder_master_orders_variants(
    client: httpx.AsyncClient, media: MediaLibrary
) -> None:
    media.ladder()
    r = await client.get("/vod/ladder/master-ts.m3u8")
    assert r.status_code == 200
    master = m3u8.loads(r.text)
    uris = [p.uri for p in master.playlists]
    assert uris == ["180p/index-ts.m3u8", "240p/index-ts.m3u8", "360p/index-ts.m3u8"]
    bandwidths = [p.stream_info.bandwidth for p in master.playlists]
    assert bandwidths == sorted(bandwidths)
    assert [p.stream_info.resolution for p in master.playlists] == [
        (320, 180),
        (426, 240),
        (640, 360),
    ]


async def test_misaligned_ladder_is_422(client: httpx.AsyncClient, media: MediaLibrary) -> None:
    media.misaligned()
    r = await client.get("/vod/misaligned/master.m3u8")
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    assert "rendition 240p" in r.json()["detail"]
    # Each rendition on its own still plays.
    assert (await client.get("/vod/misaligned/240p/index.m3u8")).status_code == 200


@pytest.mark.parametrize(("fmt", "ext", "version"), [("fmp4", "m4s", 6), ("ts", "ts", 3)])
async def test_media_playlist(
    client: httpx.AsyncClient, media: MediaLibrary, fmt: str, ext: str, version: int
) -> None:
    media.good(MEDIA)
    r = await client.get(url(MEDIA, f"main/index-{fmt}.m3u8"))
    assert r.status_code == 200
    playlist = m3u8.loads(r.text)
    assert playlist.version == version
    assert playlist.playlist_type == "vod"
    assert playlist.is_endlist
    assert playlist.media_sequence == 1
    assert playlist.is_independent_segments
    assert [s.uri for s in playlist.segments] == [f"seg-{n}.{ext}" for n in (1, 2, 3)]
    assert sum(s.duration for s in playlist.segments) == pytest.approx(14.0, abs=0.034)
    assert all(round(s.duration) <= playlist.target_duration for s in playlist.segments)
    if fmt == "fmp4":
        assert playlist.segment_map[0].uri == "init.mp4"
    else:
        assert not playlist.segment_map
    assert "#EXT-X-ALLOW-CACHE" not in r.text
    assert "PROGRAM-ID" not in r.text


async def test_default_format_is_configurable(media: MediaLibrary) -> None:
    media.good(MEDIA)
    async with app_client(media.root, segment_format="ts") as (http, _):
        text = (await http.get(url(MEDIA, "main/index.m3u8"))).text
    assert "seg-1.ts" in text
    assert "EXT-X-MAP" not in text


async def test_segments_headers_range_head_etag(
    client: httpx.AsyncClient, media: MediaLibrary
) -> None:
    media.good(MEDIA)
    seg = url(MEDIA, "main/seg-2.m4s")
    full = await client.get(seg)
    assert full.status_code == 200
    assert full.headers["content-type"] == "video/mp4"
    assert full.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert full.headers["accept-ranges"] == "bytes"
    assert int(full.headers["content-length"]) == len(full.content)
    assert full.content[4:8] == b"moof"
    tag = full.headers["etag"]

    head = await client.head(seg)
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == full.headers["content-length"]
    assert head.headers["etag"] == tag

    part = await client.get(seg, headers={"range": "bytes=100-199"})
    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes 100-199/{len(full.content)}"
    assert part.content == full.content[100:200]

    tail = await client.get(seg, headers={"range": "bytes=-50"})
    assert tail.status_code == 206
    assert tail.content == full.content[-50:]

    size = len(full.content)
    beyond = await client.get(seg, headers={"range": f"bytes={size}-"})
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == f"bytes */{size}"

    assert (await client.get(seg, headers={"if-none-match": tag})).status_code == 304
    assert (await client.get(seg, headers={"if-none-match": f'"x", W/{tag}'})).status_code == 304
    stale = await client.get(seg, headers={"range": "bytes=0-9", "if-range": '"stale"'})
    assert stale.status_code == 200
    assert len(stale.content) == size

    init = await client.get(url(MEDIA, "main/init.mp4"))
    assert init.status_code == 200
    assert init.content[4:8] == b"ftyp"
    assert init.headers["cache-control"].endswith("immutable")


async def test_ts_segment_length_matches_prediction(
    client: httpx.AsyncClient, media: MediaLibrary
) -> None:
    media.good(MEDIA)
    seg = url(MEDIA, "main/seg-1.ts")
    head = await client.head(seg)
    body = await client.get(seg)
    assert body.headers["content-type"] == "video/mp2t"
    assert int(head.headers["content-length"]) == len(body.content)
    assert len(body.content) % 188 == 0


async def test_etag_changes_with_settings_and_source(media: MediaLibrary, tmp_path: Path) -> None:
    root = tmp_path / "lib"
    root.mkdir()
    shutil.copy(media.good(MEDIA), root / "a.mp4")
    tags = []
    for target in (6.0, 4.0):
        async with app_client(root, target_duration=target) as (h, _):
            tags.append((await h.head("/vod/a.mp4/main/seg-1.m4s")).headers["etag"])
    assert tags[0] != tags[1]

    ttl = 0.5
    async with app_client(root, cache={"playlist_ttl": ttl}) as (h, _):
        before = await h.get("/vod/a.mp4/main/index.m3u8")
        # The operator replaces the file: playlists show it once cache.playlist_ttl has passed,
        # never later; segments at once (they are keyed by the file's version).
        shutil.copy(media.good("h264_2997fps"), root / "a.mp4")
        os.utime(root / "a.mp4", ns=(1, 1))
        within = await h.get("/vod/a.mp4/main/index.m3u8")
        segment = await h.head("/vod/a.mp4/main/seg-1.m4s")
        await asyncio.sleep(ttl)
        after = await h.get("/vod/a.mp4/main/index.m3u8")
    assert within.headers["etag"] == before.headers["etag"]
    assert segment.headers["etag"] != tags[0]  # tags[0]: the old file at these settings
    assert before.headers["etag"] != after.headers["etag"]
    assert before.text != after.text


async def test_cors(client: httpx.AsyncClient, media: MediaLibrary) -> None:
    media.good(MEDIA)
    plain = await client.get(url(MEDIA, "main/seg-1.m4s"))
    with_origin = await client.get(
        url(MEDIA, "main/seg-1.m4s"), headers={"origin": "https://a.example"}
    )
    for r in (plain, with_origin):
        assert r.headers["access-control-allow-origin"] == "*"
        exposed = r.headers["access-control-expose-headers"]
        assert "Content-Length" in exposed
        assert "Content-Range" in exposed
        assert "origin" not in r.headers.get("vary", "").lower()
    preflight = await client.options(
        url(MEDIA, "main/seg-1.m4s"),
        headers={
            "origin": "https://a.example",
            "access-control-request-method": "GET",
            "access-control-request-headers": "range",
        },
    )
    assert preflight.status_code == 204
    assert "GET" in preflight.headers["access-control-allow-methods"]
    assert "Range" in preflight.headers["access-control-allow-headers"]


async def test_gzip_playlists(client: httpx.AsyncClient, media: MediaLibrary) -> None:
    media.ladder()
    media.good(MEDIA)
    playlist = "/vod/ladder/master.m3u8"
    plain = await client.get(playlist, headers={"accept-encoding": "identity"})
    assert "content-encoding" not in plain.headers
    assert len(plain.content) > 256  # smaller playlists are not worth compressing
    request = client.build_request("GET", playlist, headers={"accept-encoding": "gzip"})
    raw = await client.send(request, stream=True)
    compressed = b"".join([chunk async for chunk in raw.aiter_raw()])
    assert raw.headers["content-encoding"] == "gzip"
    assert raw.headers["vary"] == "Accept-Encoding"
    assert int(raw.headers["content-length"]) == len(compressed) < len(plain.content)
    assert gzip.decompress(compressed) == plain.content
    assert raw.headers["etag"] != plain.headers["etag"]
    refused = await client.get(playlist, headers={"accept-encoding": "gzip;q=0"})
    assert "content-encoding" not in refused.headers
    segment = await client.get(url(MEDIA, "main/seg-1.m4s"), headers={"accept-encoding": "gzip"})
    assert "content-encoding" not in segment.headers


async def test_token_is_carried_into_child_uris(
    client: httpx.AsyncClient, media: MediaLibrary
) -> None:
    media.good(MEDIA)
    token = "abc.DEF-123_x"
    master = await client.get(url(MEDIA, "master.m3u8"), params={"token": token, "other": "1"})
    assert f"main/index.m3u8?token={token}\n" in master.text
    assert f'URI="main/iframes.m3u8?token={token}"' in master.text
    assert "other=" not in master.text
    media_pl = await client.get(url(MEDIA, "main/index.m3u8"), params={"token": token})
    assert f'#EXT-X-MAP:URI="init.mp4?token={token}"' in media_pl.text
    assert f"seg-1.m4s?token={token}" in media_pl.text
    untokened = await client.get(url(MEDIA, "main/index.m3u8"))
    assert untokened.headers["etag"] != media_pl.headers["etag"]


async def test_iframe_playlist(client: httpx.AsyncClient, media: MediaLibrary) -> None:
    media.good(MEDIA)
    for fmt in ("fmp4", "ts"):
        r = await client.get(url(MEDIA, f"main/iframes-{fmt}.m3u8"))
        assert r.status_code == 200
        playlist = m3u8.loads(r.text)
        assert playlist.is_i_frames_only
        assert playlist.version == 5
        assert len(playlist.segments) == 7  # one per 2 s GOP
        assert all(s.byterange for s in playlist.segments)
    audio = await client.get("/vod/audio_only.mp4/main/iframes.m3u8")
    media.good("audio_only")
    audio = await client.get("/vod/audio_only.mp4/main/iframes.m3u8")
    assert audio.status_code == 404


# Bad input ---------------------------------------------------------------------------------

CORRUPT_MESSAGES = {
    "random_bytes": "not an MP4",
    "text_file": "not an MP4",
    "empty": "not an MP4",
    "truncated_no_moov": "truncated",
    "truncated_tail": "past the end of the file",
    "stsz_count_mismatch": "stsz declares",
    "offsets_past_end": "past the end of the file",
    "stts_overflow": "stts covers",
    "moov_box_overrun": "truncated",
}


@pytest.mark.parametrize("kind", CORRUPT)
@pytest.mark.parametrize(
    "tail", ["master.m3u8", "main/index.m3u8", "main/seg-1.m4s", "main/seg-1.ts", "main/init.mp4"]
)
async def test_corrupt_media_is_422(
    client: httpx.AsyncClient, media: MediaLibrary, kind: str, tail: str
) -> None:
    path = media.corrupt(kind)
    before = path.read_bytes()
    r = await client.get(f"/vod/bad/{kind}.mp4/{tail}")
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert CORRUPT_MESSAGES[kind] in r.json()["detail"]
    assert path.read_bytes() == before


async def test_unsupported_codec_is_422(client: httpx.AsyncClient, media: MediaLibrary) -> None:
    media.unsupported_codec()
    r = await client.get("/vod/bad/mpeg4_part2.mp4/master.m3u8")
    assert r.status_code == 422
    assert "mp4v" in r.json()["detail"]


@pytest.mark.parametrize(
    "path",
    [
        "/vod/missing.mp4/master.m3u8",
        "/vod/h264_30fps_bframes.mp4/other/index.m3u8",
        "/vod/h264_30fps_bframes.mp4/main/seg-4.m4s",
        "/vod/h264_30fps_bframes.mp4/main/seg-0.m4s",
        "/vod/h264_30fps_bframes.mp4/main/seg-99999.ts",
        "/vod/h264_30fps_bframes.mp4/main/seg-01.m4s",
        "/vod/h264_30fps_bframes.mp4/main/seg-x.m4s",
        "/vod/h264_30fps_bframes.mp4/main/segment.m4s",
        "/vod/../../etc/passwd/master.m3u8",
        "/vod/%2e%2e/%2e%2e/etc/master.m3u8",
        "/vod/..%2f..%2fetc/master.m3u8",
        "/vod/a%00b.mp4/master.m3u8",
        "/vod/a%5c..%5cb/master.m3u8",
        "/vod//etc/master.m3u8",
        "/vod/master.m3u8",
        "/nothing-here",
    ],
)
async def test_not_found(client: httpx.AsyncClient, media: MediaLibrary, path: str) -> None:
    media.good(MEDIA)
    r = await client.get(path)
    assert r.status_code == 404, r.text
    assert r.headers["content-type"] == "application/problem+json"


async def test_traversal_never_touches_outside_files(media: MediaLibrary, tmp_path: Path) -> None:
    root = tmp_path / "lib"
    root.mkdir()
    outside = tmp_path / "secret.mp4"
    shutil.copy(media.good(MEDIA), outside)
    (root / "link.mp4").symlink_to(outside)
    async with app_client(root) as (h, app):
        for path in (
            "/vod/../secret.mp4/master.m3u8",
            "/vod/link.mp4/master.m3u8",
            "/vod/%2e%2e/secret.mp4/main/seg-1.m4s",
        ):
            assert (await h.get(path)).status_code == 404
    assert app.state.library.builds == 0


async def test_concurrent_cold_requests_build_once(media: MediaLibrary) -> None:
    media.good(MEDIA)
    async with app_client(media.root) as (h, app):
        replies = await asyncio.gather(*(h.get(url(MEDIA, "main/seg-2.m4s")) for _ in range(50)))
    assert {r.status_code for r in replies} == {200}
    assert len({r.content for r in replies}) == 1
    assert app.state.library.builds == 1


async def test_bad_file_does_not_hold_up_good_ones(media: MediaLibrary) -> None:
    media.good(MEDIA)
    media.corrupt("stts_overflow")
    async with app_client(media.root) as (h, app):
        bad = [h.get("/vod/bad/stts_overflow.mp4/master.m3u8") for _ in range(20)]
        good = [h.get(url(MEDIA, "main/seg-1.m4s")) for _ in range(20)]
        replies = await asyncio.gather(*bad, *good)
    assert [r.status_code for r in replies] == [422] * 20 + [200] * 20
    # The failure was cached: one parse for twenty requests.
    assert app.state.library.builds == 2


async def test_player_page(client: httpx.AsyncClient) -> None:
    r = await client.get("/player", params={"src": "</script><script>alert(1)</script>"})
    assert r.status_code == 200
    assert "<script>alert(1)" not in r.text
    assert "hls.js@" in r.text
    assert (await client.get("/healthz")).json() == {"status": "ok"}
