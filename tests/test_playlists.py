"""Every playlist the gateway serves, checked against the rules players enforce
(../shared/HLS-NOTES.md), against ffprobe's view of the source and against the bytes of the
segments the playlists point at."""

from __future__ import annotations

import posixpath
import re
from fractions import Fraction

import httpx
import m3u8
import numpy as np
import pytest

from tests.hls_text import (
    MEDIA_TAGS,
    MULTIVARIANT_TAGS,
    byterange,
    declared_version,
    extinf_ms,
    required_version,
    round_half_up,
    tags,
)
from tests.media import GOOD, MediaLibrary
from tests.probe import (
    TS_PACKET,
    TsPackets,
    expected_codecs,
    first_video_sample,
    fmp4_video_track_id,
    is_sync,
    keyframe_ms,
    source_duration_and_frame,
    streams,
)

FORMATS = ("fmp4", "ts")
VIDEO_FIXTURES = sorted(name for name, spec in GOOD.items() if spec.video is not None)


def asset(name: str) -> str:
    return f"/vod/{name}.mp4"


def resolve(base: str, uri: str) -> str:
    """A playlist URI relative to the playlist at ``base``."""
    return posixpath.join(posixpath.dirname(base), uri)


async def get(client: httpx.AsyncClient, path: str) -> httpx.Response:
    r = await client.get(path)
    assert r.status_code == 200, f"{path}: {r.status_code} {r.text[:200]}"
    return r


async def playlist(client: httpx.AsyncClient, path: str) -> tuple[str, m3u8.M3U8]:
    text = (await get(client, path)).text
    return text, m3u8.loads(text)


async def segment_bytes(client: httpx.AsyncClient, path: str, pl: m3u8.M3U8) -> dict[str, bytes]:
    """Every distinct file ``pl`` (served at ``path``) points at, by URI."""
    out: dict[str, bytes] = {}
    for segment in pl.segments:
        if segment.uri not in out:
            r = await get(client, resolve(path, segment.uri))
            assert int(r.headers["content-length"]) == len(r.content)
            out[segment.uri] = r.content
    return out


def media_url(name: str, fmt: str) -> str:
    return f"{asset(name)}/main/index-{fmt}.m3u8"


def iframes_url(name: str, fmt: str) -> str:
    return f"{asset(name)}/main/iframes-{fmt}.m3u8"


def assert_vod(text: str, pl: m3u8.M3U8) -> None:
    """What every VOD media (and I-frame) playlist we serve must say."""
    assert pl.playlist_type == "vod"
    assert pl.is_endlist
    assert text.rstrip().endswith("#EXT-X-ENDLIST")
    assert pl.media_sequence == 1
    assert pl.is_independent_segments
    # Removed from the protocol: players may choke on them.
    assert "EXT-X-ALLOW-CACHE" not in text
    assert "PROGRAM-ID" not in text


def within(declared: float, measured: float, tolerance: float = 0.10) -> bool:
    return abs(declared - measured) <= tolerance * measured


# === 2. Every served playlist follows the rules ===============================================


@pytest.mark.anyio
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", sorted(GOOD))
async def test_media_playlist_rules(
    client: httpx.AsyncClient, media: MediaLibrary, name: str, fmt: str
) -> None:
    path = media.good(name)
    text, pl = await playlist(client, media_url(name, fmt))
    durations = extinf_ms(text)
    assert set(tags(text)) <= MEDIA_TAGS
    assert pl.version == required_version(text) == (6 if fmt == "fmp4" else 3)
    assert all(round_half_up(ms) <= pl.target_duration for ms in durations)
    longest_gop = 0
    if "video" in streams(path):
        end = round(1000 * source_duration_and_frame(path)[0])
        longest_gop = int(np.diff([*keyframe_ms(path), end]).max())
    if longest_gop < 6500:
        # No GOP forces a segment past 6.5 s, so the target stays at the configured 6.
        assert pl.target_duration == 6
    else:
        assert pl.target_duration >= round_half_up(longest_gop)
    assert_vod(text, pl)
    if fmt == "fmp4":
        assert [m.uri for m in pl.segment_map] == ["init.mp4"]
    else:
        assert not pl.segment_map
    ext = "m4s" if fmt == "fmp4" else "ts"
    assert [s.uri for s in pl.segments] == [f"seg-{n}.{ext}" for n in range(1, len(durations) + 1)]


@pytest.mark.anyio
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", sorted(GOOD))
async def test_extinf_sum_matches_source_duration(
    client: httpx.AsyncClient, media: MediaLibrary, name: str, fmt: str
) -> None:
    path = media.good(name)
    text, _ = await playlist(client, media_url(name, fmt))
    duration, frame = source_duration_and_frame(path)
    assert abs(sum(extinf_ms(text)) / 1000 - duration) <= frame


@pytest.mark.anyio
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", VIDEO_FIXTURES)
async def test_iframe_playlist_rules(
    client: httpx.AsyncClient, media: MediaLibrary, name: str, fmt: str
) -> None:
    media.good(name)
    text, pl = await playlist(client, iframes_url(name, fmt))
    media_text, _ = await playlist(client, media_url(name, fmt))
    durations = extinf_ms(text)
    assert set(tags(text)) <= MEDIA_TAGS
    assert pl.is_i_frames_only
    assert pl.version == required_version(text) == 5
    assert all(round_half_up(ms) <= pl.target_duration for ms in durations)
    assert_vod(text, pl)
    assert all(s.byterange for s in pl.segments)
    # Each I-frame lasts until the next one: together they cover the whole presentation.
    assert sum(durations) == sum(extinf_ms(media_text))
    (init,) = pl.segment_map
    if fmt == "fmp4":
        assert init.uri == "init.mp4"
        assert init.byterange is None
    else:
        assert (init.uri, init.byterange) == ("seg-1.ts", "376@0")


@pytest.mark.anyio
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", sorted(GOOD))
async def test_master_playlist_rules(
    client: httpx.AsyncClient, media: MediaLibrary, name: str, fmt: str
) -> None:
    media.good(name)
    text, pl = await playlist(client, f"{asset(name)}/master-{fmt}.m3u8")
    assert pl.is_variant
    assert set(tags(text)) <= MULTIVARIANT_TAGS
    lines = text.splitlines()
    assert lines[0] == "#EXTM3U"
    # Every URI line belongs to the EXT-X-STREAM-INF just before it.
    for k, line in enumerate(lines):
        if line and not line.startswith("#"):
            assert lines[k - 1].startswith("#EXT-X-STREAM-INF:"), line
    assert declared_version(text) == required_version(text)
    assert "#EXT-X-INDEPENDENT-SEGMENTS" in lines
    (stream,) = pl.playlists
    assert stream.uri == f"main/index-{fmt}.m3u8"
    assert 0 < stream.stream_info.average_bandwidth <= stream.stream_info.bandwidth
    has_video = GOOD[name].video is not None
    assert [p.uri for p in pl.iframe_playlists] == (
        [f"main/iframes-{fmt}.m3u8"] if has_video else []
    )
    assert "EXT-X-ALLOW-CACHE" not in text
    assert "PROGRAM-ID" not in text


@pytest.mark.anyio
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", VIDEO_FIXTURES)
async def test_segments_start_with_keyframes(
    client: httpx.AsyncClient, media: MediaLibrary, name: str, fmt: str
) -> None:
    # EXT-X-INDEPENDENT-SEGMENTS is only true if every segment starts with a keyframe: at a
    # keyframe time ffprobe reports, and with a sync sample first in the segment's bytes.
    path = media.good(name)
    url = media_url(name, fmt)
    text, pl = await playlist(client, url)
    starts = np.cumsum([0, *extinf_ms(text)[:-1]])
    assert set(starts.tolist()) <= set(keyframe_ms(path))
    files = await segment_bytes(client, url, pl)
    if fmt == "fmp4":
        track_id = fmp4_video_track_id((await get(client, resolve(url, "init.mp4"))).content)
        for uri, data in files.items():
            assert data[4:8] == b"moof", uri
            assert is_sync(first_video_sample(data, 0, track_id)[2]), uri
    else:
        for uri, data in files.items():
            packets = TsPackets(data)
            first = int(np.flatnonzero(packets.pid == packets.video_pid())[0])
            assert packets.start[first], uri
            assert packets.random_access[first], uri


# === 3. CODECS against ffprobe ===============================================================


@pytest.mark.anyio
@pytest.mark.parametrize("name", sorted(GOOD))
async def test_codecs_match_ffprobe(
    client: httpx.AsyncClient, media: MediaLibrary, name: str
) -> None:
    path = media.good(name)
    _, pl = await playlist(client, f"{asset(name)}/master.m3u8")
    video, audio = expected_codecs(path)
    (stream,) = pl.playlists
    declared = stream.stream_info.codecs.split(",")
    # Only the codecs present, video first.
    assert len(declared) == (video is not None) + (audio is not None)
    if video is not None:
        assert re.fullmatch(video, declared[0]), (declared[0], video)
        # Trick play has no audio: the I-frame stream lists the video codec only.
        (iframes,) = pl.iframe_playlists
        assert iframes.iframe_stream_info.codecs == declared[0]
    if audio is not None:
        assert declared[-1] == audio


# === 4. BANDWIDTH and AVERAGE-BANDWIDTH, measured ==============================================


@pytest.mark.anyio
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", sorted(GOOD))
async def test_bandwidth_is_measured_peak_and_average(
    client: httpx.AsyncClient, media: MediaLibrary, name: str, fmt: str
) -> None:
    media.good(name)
    master_url = f"{asset(name)}/master-{fmt}.m3u8"
    _, master = await playlist(client, master_url)
    (stream,) = master.playlists
    url = resolve(master_url, stream.uri)
    text, pl = await playlist(client, url)
    files = await segment_bytes(client, url, pl)
    seconds = np.array(extinf_ms(text)) / 1000
    bits = np.array([len(files[s.uri]) * 8 for s in pl.segments])
    peak, average = float((bits / seconds).max()), float(bits.sum() / seconds.sum())
    info = stream.stream_info
    assert within(info.bandwidth, peak), (info.bandwidth, peak)
    assert within(info.average_bandwidth, average), (info.average_bandwidth, average)
    if fmt == "fmp4":
        # Segment sizes are known exactly before writing: only the rounding up to whole bit/s.
        assert (info.bandwidth, info.average_bandwidth) == (np.ceil(peak), np.ceil(average))


@pytest.mark.anyio
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", VIDEO_FIXTURES)
async def test_iframe_bandwidth_is_measured_from_ranges(
    client: httpx.AsyncClient, media: MediaLibrary, name: str, fmt: str
) -> None:
    media.good(name)
    master_url = f"{asset(name)}/master-{fmt}.m3u8"
    _, master = await playlist(client, master_url)
    (iframes,) = master.iframe_playlists
    url = resolve(master_url, iframes.uri)
    text, pl = await playlist(client, url)
    files = await segment_bytes(client, url, pl)
    lengths = []
    for entry in pl.segments:
        offset, length = byterange(entry)
        assert offset + length <= len(files[entry.uri])
        lengths.append(length)
    rates = np.array(lengths) * 8 / (np.array(extinf_ms(text)) / 1000)
    declared = iframes.iframe_stream_info.bandwidth
    assert within(declared, float(rates.max())), (declared, rates.max())


@pytest.mark.anyio
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", VIDEO_FIXTURES)
async def test_iframe_ranges_hold_exactly_the_keyframe(
    client: httpx.AsyncClient, media: MediaLibrary, name: str, fmt: str
) -> None:
    # A range must not reach into the init section (fMP4: a separate file; TS: the PAT/PMT the
    # map points at) and must hold the whole keyframe and nothing of the next frame.
    media.good(name)
    url = iframes_url(name, fmt)
    _, pl = await playlist(client, url)
    files = await segment_bytes(client, url, pl)
    if fmt == "fmp4":
        track_id = fmp4_video_track_id((await get(client, resolve(url, "init.mp4"))).content)
        for entry in pl.segments:
            offset, length = byterange(entry)
            sample_at, size, flags = first_video_sample(files[entry.uri], offset, track_id)
            assert is_sync(flags)
            assert offset + length == sample_at + size
        return
    for entry in pl.segments:
        offset, length = byterange(entry)
        assert offset >= 376  # past the PAT and PMT of the map
        assert offset % TS_PACKET == 0
        assert length % TS_PACKET == 0
        packets = TsPackets(files[entry.uri])
        video = packets.video_pid()
        first, end = offset // TS_PACKET, (offset + length) // TS_PACKET
        assert np.all(packets.pid[first:end] == video)
        assert packets.start[first]
        assert packets.random_access[first]
        assert not packets.start[first + 1 : end].any(), "range holds more than one PES"
        later = np.flatnonzero(packets.pid[end:] == video)
        assert later.size == 0 or packets.start[end + later[0]], "range cuts the keyframe PES"


# === 5. RESOLUTION and FRAME-RATE ============================================================


@pytest.mark.anyio
# 29.97 fps once came out as 29.971: the frame rate must come from the sample durations, not
# the edit list's window (rounded to the movie timescale).
@pytest.mark.parametrize("name", VIDEO_FIXTURES)
async def test_resolution_and_frame_rate_match_source(
    client: httpx.AsyncClient, media: MediaLibrary, name: str
) -> None:
    path = media.good(name)
    text, pl = await playlist(client, f"{asset(name)}/master.m3u8")
    video = streams(path)["video"]
    (stream,) = pl.playlists
    assert stream.stream_info.resolution == (video["width"], video["height"])
    (iframes,) = pl.iframe_playlists
    assert iframes.iframe_stream_info.resolution == (video["width"], video["height"])
    expected = f"{float(Fraction(video['avg_frame_rate'])):.3f}"
    assert re.findall(r"FRAME-RATE=([^,\s]*)", text) == [expected]


# === 6. The ladder ===========================================================================


@pytest.mark.anyio
@pytest.mark.parametrize("fmt", FORMATS)
async def test_ladder_variants_ascend_with_own_iframe_streams(
    client: httpx.AsyncClient, media: MediaLibrary, fmt: str
) -> None:
    root = media.ladder()
    master_url = f"/vod/ladder/master-{fmt}.m3u8"
    _, pl = await playlist(client, master_url)
    bandwidths = [p.stream_info.bandwidth for p in pl.playlists]
    assert bandwidths == sorted(bandwidths)
    assert len(set(bandwidths)) == len(bandwidths) == 3
    folders = [posixpath.dirname(p.uri) for p in pl.playlists]
    assert sorted(folders) == sorted(p.stem for p in root.glob("*.mp4"))
    # One I-frame stream per variant, of that variant's own rendition.
    assert [posixpath.dirname(i.uri) for i in pl.iframe_playlists] == folders
    for stream, iframes in zip(pl.playlists, pl.iframe_playlists, strict=True):
        assert iframes.uri == f"{posixpath.dirname(stream.uri)}/iframes-{fmt}.m3u8"
        assert iframes.iframe_stream_info.resolution == stream.stream_info.resolution
        assert iframes.iframe_stream_info.codecs == stream.stream_info.codecs.split(",")[0]
        assert iframes.iframe_stream_info.bandwidth < stream.stream_info.bandwidth
        assert (await client.get(resolve(master_url, iframes.uri))).status_code == 200


# === 7. Ten minutes without drift ============================================================


@pytest.mark.anyio
@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
async def test_long_file_extinf_sum_does_not_drift(
    client: httpx.AsyncClient, media: MediaLibrary, fmt: str
) -> None:
    path = media.long()
    url = f"/vod/{path.name}/main/index-{fmt}.m3u8"
    text, pl = await playlist(client, url)
    durations = extinf_ms(text)
    assert len(durations) >= 95
    duration, frame = source_duration_and_frame(path)
    assert duration == pytest.approx(600.0, abs=frame)
    assert abs(sum(durations) / 1000 - 600.0) <= frame
    assert pl.target_duration == 6
    assert all(round_half_up(ms) <= 6 for ms in durations)
    iframes_text, _ = await playlist(client, url.replace("index-", "iframes-"))
    assert sum(extinf_ms(iframes_text)) == sum(durations)
