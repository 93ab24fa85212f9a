"""MPEG-TS segments: sizes from the index alone, packet structure, and what FFmpeg makes of them."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from packager import boxes
from packager.index import MediaIndex, Track
from packager.moov import parse_moov
from packager.mux import TIMELINE_OFFSET_SECONDS, ts
from packager.samples import SampleSource, segment_ranges
from packager.segmenter import SegmenterConfig, SegmentPlan, plan
from packager.synth import SynthSpec, write
from tests.conftest import require
from tests.probe import ffprobe

# name: (spec, segment target in seconds)
SPECS: dict[str, tuple[SynthSpec, float]] = {
    # 30 fps, B-frames, AAC 48 kHz, a keyframe a second: three fragments per segment.
    "h264": (SynthSpec(duration=7, gop_seconds=1), 3.0),
    "ntsc": (SynthSpec(duration=6, fps=Fraction(30000, 1001), audio_rate=44100), 2.0),
    # No reordering: audio cut just before a keyframe decodes before it, yet the keyframe leads.
    "no_bframes": (SynthSpec(duration=6, fps=Fraction(25), bframes=0, audio_rate=44100), 2.0),
    "hevc": (SynthSpec(duration=6, video="hevc"), 2.0),
    "audio_only": (SynthSpec(duration=6, video=None), 2.0),
    "video_only": (SynthSpec(duration=6, fps=Fraction(25), bframes=0, audio_rate=None), 2.0),
    # x264 writes an AUD into every sample: dropped, and the access unit padded to the model.
    "h264_aud": (SynthSpec(duration=4, extra={"aud": "1"}), 2.0),
}
PIDS = {"pat": 0, "pmt": 0x1000, "video": 0x100, "audio": 0x101}
OFFSET_90K = TIMELINE_OFFSET_SECONDS * 90000


@dataclass(frozen=True)
class Packaged:
    name: str
    folder: Path
    index: MediaIndex
    plan: SegmentPlan
    segments: list[bytes]
    sizes: list[int]  # SegmentBody.size of each segment

    @property
    def joined(self) -> Path:
        return self.folder / "all.ts"

    def segment_file(self, k: int) -> Path:
        return self.folder / f"seg{k}.ts"


def load(path: Path, target: float) -> tuple[bytes, MediaIndex, SegmentPlan]:
    data = path.read_bytes()
    moov = boxes.find(data, 0, len(data), "moov")
    assert moov is not None
    index = parse_moov(data[moov.start : moov.end], len(data))
    return data, index, plan(index, SegmenterConfig(target=target))


def source_for(data: bytes, index: MediaIndex, segment_plan: SegmentPlan, k: int) -> SampleSource:
    ranges = segment_ranges(index, segment_plan, k, 65536)
    return SampleSource(ranges, [data[a:b] for a, b in ranges])


def package(name: str, folder: Path) -> Packaged:
    spec, target = SPECS[name]
    data, index, segment_plan = load(write(folder / "source.mp4", spec), target)
    segments, sizes = [], []
    for k in range(segment_plan.count):
        body = ts.write_segment(index, segment_plan, k, source_for(data, index, segment_plan, k))
        segments.append(body.join())
        sizes.append(body.size)
    out = Packaged(name, folder, index, segment_plan, segments, sizes)
    out.joined.write_bytes(b"".join(segments))
    for k, segment in enumerate(segments):
        out.segment_file(k).write_bytes(segment)
    return out


@pytest.fixture(scope="session")
def library(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Packaged]:
    """Each test file packaged once per session, on first use."""
    made: dict[str, Packaged] = {}

    def get(name: str) -> Packaged:
        if name not in made:
            made[name] = package(name, tmp_path_factory.mktemp(f"ts_{name}"))
        return made[name]

    return get


@pytest.fixture(scope="session", params=sorted(SPECS))
def packaged(request: pytest.FixtureRequest, library: Callable[[str], Packaged]) -> Packaged:
    return library(request.param)


# --- parsing helpers ---------------------------------------------------------------------------


def packets(data: bytes) -> np.ndarray:
    assert len(data) % 188 == 0
    rows: np.ndarray = np.frombuffer(data, dtype=np.uint8).reshape(-1, 188)
    return rows


def pids(rows: np.ndarray) -> np.ndarray:
    values: np.ndarray = ((rows[:, 1].astype(np.int64) & 0x1F) << 8) | rows[:, 2]
    return values


def payload_start(row: np.ndarray) -> int:
    return 4 + (1 + int(row[4]) if row[3] & 0x20 else 0)


def pcr_of(row: np.ndarray) -> int | None:
    if not row[3] & 0x20 or row[4] == 0 or not row[5] & 0x10:
        return None
    raw = int.from_bytes(bytes(row[6:12]), "big")
    return raw >> 15


def pes_timestamps(row: np.ndarray) -> tuple[int, int]:
    """(PTS, DTS) of the PES that starts in ``row``; DTS = PTS when absent."""
    pes = bytes(row[payload_start(row) :])
    assert pes[:3] == b"\x00\x00\x01"

    def stamp(b: bytes) -> int:
        return ((b[0] >> 1) & 7) << 30 | b[1] << 22 | (b[2] >> 1) << 15 | b[3] << 7 | b[4] >> 1

    pts = stamp(pes[9:14])
    return pts, stamp(pes[14:19]) if pes[7] & 0x40 else pts


def crc32_mpeg2(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
            crc &= 0xFFFFFFFF
    return crc


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False)


def video_frames(path: Path) -> list[dict[str, Any]]:
    probe = ffprobe("-select_streams", "v", "-show_frames", "-show_entries",
                         "frame=key_frame,pict_type", path)  # fmt: skip
    frames: list[dict[str, Any]] = probe.get("frames", [])
    return frames


def to_90k(values: np.ndarray, timescale: int) -> np.ndarray:
    return np.rint(values.astype(np.float64) * 90000 / timescale).astype(np.int64) + OFFSET_90K


# --- sizes and structure -----------------------------------------------------------------------


def test_sizes_match_the_model(packaged: Packaged) -> None:
    model = ts.segment_sizes(packaged.index, packaged.plan)
    assert model.dtype == np.int64
    assert model.shape == (packaged.plan.count,)
    assert packaged.plan.count >= 2
    for k, segment in enumerate(packaged.segments):
        assert packaged.sizes[k] == len(segment) == model[k], k


def test_content_type(packaged: Packaged) -> None:
    assert ts.content_type(packaged.index) == "video/mp2t"


def test_every_segment_is_packets_opening_with_pat_and_pmt(packaged: Packaged) -> None:
    has_video = packaged.index.video is not None
    for _k, segment in enumerate(packaged.segments):
        rows = packets(segment)
        assert (rows[:, 0] == 0x47).all()
        assert list(pids(rows[:2])) == [PIDS["pat"], PIDS["pmt"]]
        # The same PAT and PMT every time, but for the continuity counter.
        psi, first_psi = rows[:2].copy(), packets(packaged.segments[0])[:2].copy()
        psi[:, 3] &= 0xF0
        first_psi[:, 3] &= 0xF0
        assert (psi == first_psi).all()
        for row, table_id in ((rows[0], 0x00), (rows[1], 0x02)):
            assert row[1] & 0x40
            assert row[4] == 0
            section_length = ((int(row[6]) & 0x0F) << 8) | int(row[7])
            section = bytes(row[5 : 8 + section_length])
            assert section[0] == table_id
            assert crc32_mpeg2(section) == 0  # CRC over the whole section, CRC included
        assert set(pids(rows[2:]).tolist()) <= {PIDS["video"], PIDS["audio"]}
        # The first PES is the keyframe (or the first audio PES), with PCR and random access.
        first = rows[2]
        assert pids(first[None])[0] == (PIDS["video"] if has_video else PIDS["audio"])
        assert first[1] & 0x40
        assert first[3] & 0x20
        assert first[5] & 0x50 == 0x50


def test_pmt_lists_the_streams(packaged: Packaged) -> None:
    row = packets(packaged.segments[0])[1]
    section_length = ((int(row[6]) & 0x0F) << 8) | int(row[7])
    section = bytes(row[5 : 8 + section_length])
    pcr_pid = int.from_bytes(section[8:10], "big") & 0x1FFF
    entries = section[12:-4]
    streams = {int.from_bytes(entries[i + 1 : i + 3], "big") & 0x1FFF: entries[i]
               for i in range(0, len(entries), 5)}  # fmt: skip
    video, audio = packaged.index.video, packaged.index.audio
    expected = {}
    if video is not None:
        expected[PIDS["video"]] = 0x24 if video.info.codec in ("hvc1", "hev1") else 0x1B
    if audio is not None:
        expected[PIDS["audio"]] = 0x0F
    assert streams == expected
    assert pcr_pid == (PIDS["video"] if video is not None else PIDS["audio"])


def test_continuity_counters_run_on_across_segments(packaged: Packaged) -> None:
    rows = packets(packaged.joined.read_bytes())
    all_pids = pids(rows)
    counters = rows[:, 3] & 0x0F
    for pid in PIDS.values():
        mine = counters[all_pids == pid].astype(np.int64)
        if mine.shape[0]:
            assert mine[0] == 0
            assert ((np.diff(mine) % 16) == 1).all(), hex(pid)
    for k, segment in enumerate(packaged.segments):
        assert (packets(segment)[:2, 3] & 0x0F == k % 16).all()


def test_pcr_precedes_decode_time_and_increases(packaged: Packaged) -> None:
    rows = packets(packaged.joined.read_bytes())
    pcr_pid = PIDS["video"] if packaged.index.video is not None else PIDS["audio"]
    last = -1
    starts = np.flatnonzero((rows[:, 1] & 0x40) != 0)
    for i in starts.tolist():
        row = rows[i]
        pid = int(pids(row[None])[0])
        if pid not in (PIDS["video"], PIDS["audio"]):
            continue
        pcr = pcr_of(row)
        if pid != pcr_pid:
            assert pcr is None
            continue
        assert pcr is not None
        _, dts = pes_timestamps(row)
        assert last < pcr <= dts
        last = pcr


def test_each_pes_ends_on_a_packet_boundary(packaged: Packaged) -> None:
    rows = packets(packaged.joined.read_bytes())
    all_pids = pids(rows)
    for pid in (PIDS["video"], PIDS["audio"]):
        mine = rows[all_pids == pid]
        if not mine.shape[0]:
            continue
        # A packet before a PES start (or the last one) is a PES's last: its payload ends there.
        ends = np.append(np.flatnonzero(mine[1:, 1] & 0x40), mine.shape[0] - 1)
        for row in mine[ends]:
            assert payload_start(row) < 188


# --- what FFmpeg sees --------------------------------------------------------------------------


@pytest.fixture
def ffmpeg() -> None:
    for tool in ("ffmpeg", "ffprobe"):
        require(tool, "install FFmpeg (apt-get install ffmpeg)")


@pytest.mark.player
def test_ffmpeg_decodes_the_concatenation_without_warnings(
    packaged: Packaged, ffmpeg: None
) -> None:
    result = run("ffmpeg", "-nostdin", "-v", "warning", "-i", packaged.joined, "-f", "null", "-")
    assert result.returncode == 0
    assert result.stderr == ""


@pytest.mark.player
def test_each_segment_decodes_alone_from_a_keyframe(packaged: Packaged, ffmpeg: None) -> None:
    for k in range(packaged.plan.count):
        path = packaged.segment_file(k)
        if packaged.index.video is None:
            probe = ffprobe("-count_frames", "-show_streams", path)
            assert int(probe["streams"][0]["nb_read_frames"]) > 0
            continue
        frames = video_frames(path)
        assert frames, k
        assert (frames[0]["key_frame"], frames[0]["pict_type"]) == (1, "I"), k


@pytest.mark.player
def test_timestamps_are_the_source_shifted_and_continuous(packaged: Packaged, ffmpeg: None) -> None:
    probe = ffprobe("-show_packets", "-show_entries", "packet=codec_type,pts,dts",
                         packaged.joined)  # fmt: skip
    found: dict[str, list[dict[str, Any]]] = {"video": [], "audio": []}
    for packet in probe["packets"]:
        found[packet["codec_type"]].append(packet)
    for kind, track in (("video", packaged.index.video), ("audio", packaged.index.audio)):
        if track is None:
            assert not found[kind]
            continue
        assert len(found[kind]) == track.count, kind
        scale = track.info.timescale
        pts = np.array([p["pts"] for p in found[kind]], dtype=np.int64)
        assert np.abs(pts - to_90k(track.pts, scale)).max() <= 1, kind
        if kind == "video":
            dts = np.array([p["dts"] for p in found[kind]], dtype=np.int64)
            assert np.abs(dts - to_90k(track.dts, scale)).max() <= 1


@pytest.mark.player
def test_iframe_ranges_are_whole_keyframe_pes(packaged: Packaged, ffmpeg: None) -> None:
    if packaged.index.video is None:
        assert ts.iframe_ranges(packaged.index, packaged.plan, 0) == []
        return
    for k, segment in enumerate(packaged.segments):
        ranges = ts.iframe_ranges(packaged.index, packaged.plan, k)
        assert [r[0] for r in ranges] == list(packaged.plan.fragments(k))
        for fragment, offset, length in ranges:
            assert offset % 188 == 0
            assert length % 188 == 0
            assert offset >= ts.PSI_SIZE
            assert offset + length <= len(segment)
            rows = packets(segment[offset : offset + length])
            assert (pids(rows) == PIDS["video"]).all()
            assert rows[0, 1] & 0x40
            assert rows[0, 5] & 0x40
            assert not (rows[1:, 1] & 0x40).any()  # exactly one PES
            # The PES ends here: the next video packet (if any) starts a new one.
            after = packets(segment[offset + length :])
            later = after[pids(after) == PIDS["video"]]
            assert not later.shape[0] or later[0, 1] & 0x40
            path = packaged.folder / f"iframe{k}_{fragment}.ts"
            path.write_bytes(segment[: ts.PSI_SIZE] + segment[offset : offset + length])
            frames = video_frames(path)
            assert [f["key_frame"] for f in frames] == [1], (k, fragment)


def test_h264_aud_fixture_really_carries_auds(library: Callable[[str], Packaged]) -> None:
    packaged = library("h264_aud")
    video = packaged.index.video
    assert video is not None
    data = (packaged.folder / "source.mp4").read_bytes()
    for i in range(video.count):
        sample = data[int(video.offset[i]) : int(video.offset[i]) + int(video.size[i])]
        types, pos = [], 0
        while pos < len(sample):
            types.append(sample[pos + 4] & 0x1F)
            pos += 4 + int.from_bytes(sample[pos : pos + 4], "big")
        assert 9 in types, i  # every sample holds an AUD NAL unit
    # ... yet the TS has exactly one AUD per access unit: the one the muxer writes.
    assert packaged.joined.read_bytes().count(b"\x00\x00\x00\x01\x09\xf0") == video.count


# --- Annex-B conversion details ----------------------------------------------------------------


def test_access_unit_drops_auds_pads_and_handles_short_lengths() -> None:
    codec = ts._VideoCodec(0x1B, False, 4, b"\x00\x00\x00\x01\x09\xf0", b"\x00\x00\x00\x01\x67")
    sample = b"\x00\x00\x00\x02\x09\xf0" + b"\x00\x00\x00\x03\x65\x88\x84"
    expected = len(codec.aud) + len(codec.parameter_sets) + len(sample)
    out = b"".join(ts._access_unit(memoryview(sample), codec, True, expected))
    assert out == codec.aud + codec.parameter_sets + b"\x00\x00\x00\x01\x65\x88\x84" + bytes(6)
    short = codec._replace(length_size=2)
    sample = b"\x00\x03\x41\x9a\x02" + b"\x00\x02\x41\x9b"
    out = b"".join(ts._access_unit(memoryview(sample), short, False, len(sample) + 6))
    # Larger than the model predicts, but a correct Annex-B access unit.
    assert out == codec.aud + b"\x00\x00\x00\x01\x41\x9a\x02" + b"\x00\x00\x00\x01\x41\x9b"


# --- cost of the size model --------------------------------------------------------------------


def _tile(track: Track, times: int) -> Track:
    period = int(track.info.end_dts - track.dts[0])
    shifts = np.repeat(np.arange(times, dtype=np.int64) * period, track.count)
    info = msgspec.structs.replace(
        track.info,
        end_dts=track.info.end_dts + (times - 1) * period,
        presentation_end=track.info.presentation_end + (times - 1) * period,
    )
    return Track(
        info=info,
        dts=np.tile(track.dts, times) + shifts,
        cto=np.tile(track.cto, times),
        size=np.tile(track.size, times),
        offset=np.tile(track.offset, times),
        sync=np.tile(track.sync, times),
    )


def test_segment_sizes_of_a_two_hour_file_is_cheap(library: Callable[[str], Packaged]) -> None:
    packaged = library("h264")
    times = 7200 // 7
    index = MediaIndex(0, "", tuple(_tile(t, times) for t in packaged.index.tracks))
    long_plan = plan(index, SegmenterConfig(target=6))
    start = time.perf_counter()
    sizes = ts.segment_sizes(index, long_plan)
    elapsed = time.perf_counter() - start
    assert sizes.shape == (long_plan.count,)
    assert (sizes > 0).all()
    assert elapsed < 0.5  # typically ~10 ms; loose so a busy machine does not fail it
