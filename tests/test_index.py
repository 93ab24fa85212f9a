"""The MP4 index equals what PyAV's demuxer reports, sample by sample, for every fixture."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from backends.blocking import BlockingRunner
from backends.errors import BadMedia, UnsupportedMedia
from backends.storage import open_storage
from conf.settings import StorageSettings
from packager import boxes
from packager.boxes import box, full_box
from packager.index import INDEX_VERSION, MediaIndex, Track
from packager.mp4 import HEAD_BYTES, read_index
from tests.media import CORRUPT, GOOD, MediaLibrary
from tests.moovgen import write_big_moov


async def index_of(path: Path, max_moov: int = 1 << 30) -> MediaIndex:
    storage = open_storage(StorageSettings(library=str(path.parent)), BlockingRunner(2))
    return await read_index(storage, await storage.stat(path.name), BlockingRunner(2), max_moov)


def demuxed(path: Path, kind: str) -> np.ndarray:
    """(pts, dts, size, pos, keyframe) of every packet of the first ``kind`` stream."""
    with av.open(str(path)) as container:
        stream = next(s for s in container.streams if s.type == kind)
        rows = [
            (p.pts, p.dts, p.size, p.pos, int(p.is_keyframe))
            for p in container.demux(stream)
            if p.size
        ]
    return np.array(rows, dtype=np.int64)


def ours(track: Track) -> np.ndarray:
    columns = [track.pts, track.dts, track.size, track.offset, track.sync]
    return np.stack([c.astype(np.int64) for c in columns], axis=1)


def assert_matches_pyav(path: Path, index: MediaIndex) -> None:
    for track in index.tracks:
        expected = demuxed(path, track.info.kind)
        got = ours(track)
        assert got.shape == expected.shape, f"{track.info.kind}: sample count differs"
        wrong = np.flatnonzero((got != expected).any(axis=1))
        assert wrong.size == 0, (
            f"{track.info.kind} sample {wrong[0]}: ours {got[wrong[0]]}, PyAV {expected[wrong[0]]}"
        )


@pytest.mark.anyio
@pytest.mark.parametrize("name", sorted(GOOD))
async def test_index_matches_pyav(media: MediaLibrary, name: str) -> None:
    path = media.good(name)
    index = await index_of(path)
    spec = GOOD[name]
    assert (index.video is not None) == (spec.video is not None)
    assert (index.audio is not None) == (spec.audio_rate is not None)
    assert_matches_pyav(path, index)
    if index.audio is not None:
        assert index.audio.info.sample_rate == spec.audio_rate
        assert index.audio.info.channels == 2
    if index.video is not None:
        assert (index.video.info.width, index.video.info.height) == (spec.width, spec.height)
        assert index.video.info.codec == ("hvc1" if spec.video == "hevc" else "avc1")


@pytest.mark.anyio
@pytest.mark.slow
async def test_ten_minute_file_matches_pyav(media: MediaLibrary) -> None:
    path = media.long()
    index = await index_of(path)
    assert index.video is not None
    assert index.video.count == 600 * 25
    assert_matches_pyav(path, index)


@pytest.mark.anyio
async def test_index_round_trips_through_bytes(media: MediaLibrary) -> None:
    index = await index_of(media.good("h264_30fps_bframes"))
    blob = index.to_bytes()
    again = MediaIndex.from_bytes(blob)
    assert again.file_size == index.file_size
    for a, b in zip(index.tracks, again.tracks, strict=True):
        assert a.info == b.info
        for name in ("dts", "cto", "size", "offset", "sync"):
            assert np.array_equal(getattr(a, name), getattr(b, name))
    stale = blob[:4] + (INDEX_VERSION + 1).to_bytes(2, "big") + blob[6:]
    with pytest.raises(BadMedia, match="version"):
        MediaIndex.from_bytes(stale)
    with pytest.raises(BadMedia):
        MediaIndex.from_bytes(blob[: len(blob) // 2])


@pytest.mark.anyio
async def test_moov_over_100_mb_at_the_end(media: MediaLibrary, tmp_path: Path) -> None:
    template = await index_of(media.good("video_only"))
    assert template.video is not None
    count = 5_300_000  # 20 bytes of tables per sample: a moov of about 106 MB
    path = tmp_path / "huge.mp4"
    moov_size = write_big_moov(path, template.video.info, count)
    assert moov_size > 100 * 2**20
    assert path.stat().st_size > HEAD_BYTES + moov_size
    index = await index_of(path)
    assert index.video is not None
    assert index.video.count == count
    assert int(index.video.sync.sum()) == -(-count // 60)
    assert int(index.video.offset[-1]) == 48 + (count - 1) * 100  # ftyp 32 + mdat header 16
    with pytest.raises(UnsupportedMedia, match="exceeds the configured limit"):
        await index_of(path, max_moov=64 * 2**20)


EXPECTED_ERRORS = {
    "random_bytes": "not an MP4",
    "text_file": "not an MP4",
    "empty": "not an MP4",
    "truncated_no_moov": "truncated",
    "truncated_tail": "past the end of the file",
    "stsz_count_mismatch": "stsz declares 10000 entries",
    "offsets_past_end": "past the end of the file",
    "stts_overflow": "stts covers",
    "moov_box_overrun": "truncated",
}


@pytest.mark.anyio
@pytest.mark.parametrize("kind", CORRUPT)
async def test_corrupt_files_explain_themselves(media: MediaLibrary, kind: str) -> None:
    with pytest.raises(BadMedia, match=EXPECTED_ERRORS[kind]):
        await index_of(media.corrupt(kind))


@pytest.mark.anyio
async def test_unsupported_codec(media: MediaLibrary) -> None:
    with pytest.raises(UnsupportedMedia, match="mp4v"):
        await index_of(media.unsupported_codec())


def _stz2(field_size: int, sizes: list[int]) -> bytes:
    if field_size == 4:
        padded = sizes + [0] * (len(sizes) % 2)
        table = bytes((padded[i] << 4) | padded[i + 1] for i in range(0, len(padded), 2))
    else:
        table = b"".join(s.to_bytes(field_size // 8, "big") for s in sizes)
    return full_box(
        b"stz2", 0, 0, bytes(3), bytes([field_size]), len(sizes).to_bytes(4, "big"), table
    )


@pytest.mark.parametrize(
    ("field_size", "sizes"), [(4, [1, 15, 7]), (8, [200, 3, 255, 9]), (16, [65535, 1])]
)
def test_compact_sample_sizes(field_size: int, sizes: list[int]) -> None:
    from packager import moov as moov_module

    stbl = box(b"stbl", _stz2(field_size, sizes))
    ctx = moov_module._Ctx(stbl, file_size=10**6, movie_timescale=1000)
    parsed = moov_module._sizes(ctx, boxes.parse_header(stbl, 0, len(stbl)))
    assert parsed.tolist() == sizes


def test_stz2_with_bad_field_size_is_bad_media() -> None:
    from packager import moov as moov_module

    stbl = box(
        b"stbl", full_box(b"stz2", 0, 0, bytes(3), bytes([12]), (2).to_bytes(4, "big"), bytes(3))
    )
    ctx = moov_module._Ctx(stbl, file_size=10**6, movie_timescale=1000)
    with pytest.raises(BadMedia, match="stz2"):
        moov_module._sizes(ctx, boxes.parse_header(stbl, 0, len(stbl)))
