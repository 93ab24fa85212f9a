"""Looking inside media and segments, for tests: ffprobe's view, ISO-BMFF boxes, TS packets."""

from __future__ import annotations

import functools
import json
import struct
import subprocess
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from tests.conftest import require

TS_PACKET = 188
H264_PROFILES = {"High": 0x64, "Main": 0x4D, "Baseline": 0x42, "Constrained Baseline": 0x42}
AAC_OBJECT_TYPES = {"LC": 2, "HE-AAC": 5}


def ffprobe(*args: str | Path) -> Any:
    """ffprobe's JSON for ``args``; a missing ffprobe fails in CI and skips elsewhere."""
    tool = require("ffprobe", "install ffmpeg (apt-get install ffmpeg; scripts/test does it)")
    out = subprocess.run(
        [tool, "-v", "error", "-of", "json", *map(str, args)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return json.loads(out.stdout)


def packets_by_type(source: str | Path) -> dict[str, list[dict[str, Any]]]:
    """Every packet of ``source`` as ffprobe reports it, split into video and audio."""
    data = ffprobe("-show_packets", "-show_streams", source)
    kinds = {s["index"]: s["codec_type"] for s in data["streams"]}
    out: dict[str, list[dict[str, Any]]] = {"video": [], "audio": []}
    for packet in data["packets"]:
        out[kinds[packet["stream_index"]]].append(packet)
    return out


@functools.cache
def streams(path: Path) -> dict[str, dict[str, Any]]:
    """ffprobe's first video and first audio stream of ``path``, by codec type."""
    found: dict[str, dict[str, Any]] = {}
    for stream in ffprobe("-show_streams", str(path))["streams"]:
        found.setdefault(stream["codec_type"], stream)
    return found


@functools.cache
def keyframe_ms(path: Path) -> list[int]:
    """Presentation times (ms from the first) of the video keyframes."""
    packets = ffprobe(
        "-select_streams", "v:0", "-show_entries", "packet=pts_time,flags", str(path)
    )["packets"]
    times = sorted(float(p["pts_time"]) for p in packets if "K" in p["flags"])
    return [round((t - times[0]) * 1000) for t in times]


def source_duration_and_frame(path: Path) -> tuple[float, float]:
    """(duration, one frame) in seconds: the video's, or the audio's for audio-only files."""
    info = streams(path)
    if "video" in info:
        video = info["video"]
        return float(video["duration"]), float(1 / Fraction(video["avg_frame_rate"]))
    audio = info["audio"]
    return float(audio["duration"]), 1024 / int(audio["sample_rate"])


def expected_codecs(path: Path) -> tuple[str | None, str | None]:
    """(video regex, audio string) of the CODECS entries the source must be announced with."""
    info = streams(path)
    video_codec = None
    if "video" in info:
        video = info["video"]
        if video["codec_name"] == "h264":
            profile = H264_PROFILES[video["profile"]]
            # avc1.PPCCLL: profile and level from ffprobe, the constraint byte as written.
            video_codec = rf"avc1\.{profile:02x}[0-9a-f]{{2}}{int(video['level']):02x}"
        else:
            assert (video["codec_name"], video["profile"]) == ("hevc", "Main")
            # Main profile, compatibility flags 6, main tier, level_idc, then constraint bytes.
            video_codec = rf"hvc1\.1\.6\.L{int(video['level'])}(\.[0-9A-F]{{1,2}})*"
    audio_codec = None
    if "audio" in info:
        audio_codec = f"mp4a.40.{AAC_OBJECT_TYPES[info['audio']['profile']]}"
    return video_codec, audio_codec


# --- helpers: segment bytes ------------------------------------------------------------------


def boxes(data: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, end) of each ISO BMFF box in data[start:end]."""
    pos, end = start, len(data) if end is None else end
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            size, header = struct.unpack_from(">Q", data, pos + 8)[0], 16
        assert size >= header, f"box {kind!r} at {pos} has size {size}"
        yield kind, pos + header, pos + size
        pos += size


def child(data: bytes, start: int, end: int, kind: bytes) -> tuple[int, int]:
    """(payload start, end) of the first ``kind`` box in data[start:end]."""
    for found, payload, box_end in boxes(data, start, end):
        if found == kind:
            return payload, box_end
    raise AssertionError(f"no {kind!r} box")


def fmp4_video_track_id(init: bytes) -> int:
    moov = child(init, 0, len(init), b"moov")
    for kind, payload, end in boxes(init, *moov):
        if kind != b"trak":
            continue
        mdia = child(init, payload, end, b"mdia")
        hdlr, _ = child(init, *mdia, b"hdlr")
        if init[hdlr + 8 : hdlr + 12] == b"vide":
            tkhd, _ = child(init, payload, end, b"tkhd")
            version = init[tkhd]
            return int(struct.unpack_from(">I", init, tkhd + (20 if version else 12))[0])
    raise AssertionError("init segment has no video track")


# Optional fields of tfhd and of a trun's first sample: (flag, name, width), in file order.
TFHD_FIELDS = (
    (0x1, "base", 8),
    (0x2, "description", 4),
    (0x8, "duration", 4),
    (0x10, "size", 4),
    (0x20, "flags", 4),
)
TRUN_FIELDS = (
    (0x1, "data_offset", 4),
    (0x4, "first_flags", 4),
    (0x100, "duration", 4),
    (0x200, "size", 4),
    (0x400, "flags", 4),
)


def read_fields(
    data: bytes, pos: int, flags: int, table: tuple[tuple[int, str, int], ...]
) -> dict[str, int]:
    fields = {}
    for bit, name, width in table:
        if flags & bit:
            fields[name] = int.from_bytes(data[pos : pos + width], "big")
            pos += width
    return fields


def first_video_sample(segment: bytes, moof_at: int, track_id: int) -> tuple[int, int, int]:
    """(offset in the segment, size, flags) of the first video sample of the fragment whose
    moof starts at ``moof_at``."""
    kind, payload, end = next(boxes(segment, moof_at))
    assert kind == b"moof", f"no moof at {moof_at}"
    for traf_kind, traf, traf_end in boxes(segment, payload, end):
        tfhd, _ = child(segment, traf, traf_end, b"tfhd") if traf_kind == b"traf" else (0, 0)
        if not tfhd or struct.unpack_from(">I", segment, tfhd + 4)[0] != track_id:
            continue
        tf_flags = int.from_bytes(segment[tfhd + 1 : tfhd + 4], "big")
        defaults = read_fields(segment, tfhd + 8, tf_flags, TFHD_FIELDS)
        assert tf_flags & 0x020000, "data offsets must count from the moof (default-base-is-moof)"
        assert "base" not in defaults
        trun, _ = child(segment, traf, traf_end, b"trun")
        tr_flags = int.from_bytes(segment[trun + 1 : trun + 4], "big")
        first = read_fields(segment, trun + 8, tr_flags, TRUN_FIELDS)
        size = first.get("size", defaults.get("size", 0))
        flags = first.get("first_flags", first.get("flags", defaults.get("flags", 0)))
        return moof_at + first.get("data_offset", 0), size, flags
    raise AssertionError(f"fragment at {moof_at} has no video track run")


def is_sync(sample_flags: int) -> bool:
    return not sample_flags & 0x00010000  # sample_is_non_sync_sample


class TsPackets:
    """The packets of a TS segment: PID, payload-unit-start and random-access flags."""

    def __init__(self, data: bytes) -> None:
        assert len(data) % TS_PACKET == 0, "TS segment is not whole packets"
        self.data = data
        self.count = len(data) // TS_PACKET
        self.pid = np.zeros(self.count, dtype=np.int64)
        self.start = np.zeros(self.count, dtype=np.bool_)
        self.random_access = np.zeros(self.count, dtype=np.bool_)
        for k in range(self.count):
            at = k * TS_PACKET
            assert data[at] == 0x47, f"packet {k} has no sync byte"
            self.pid[k] = ((data[at + 1] & 0x1F) << 8) | data[at + 2]
            self.start[k] = bool(data[at + 1] & 0x40)
            has_adaptation = (data[at + 3] >> 4) & 2
            if has_adaptation and data[at + 4] > 0:
                self.random_access[k] = bool(data[at + 5] & 0x40)

    def section(self, k: int) -> bytes:
        """The PSI section starting in packet ``k`` (after the pointer field)."""
        at = k * TS_PACKET + 4
        return self.data[at + 1 + self.data[at] : (k + 1) * TS_PACKET]

    def video_pid(self) -> int:
        """Read PAT then PMT to find the H.264 (0x1B) or HEVC (0x24) elementary stream."""
        assert self.pid[0] == 0, "the segment does not start with a PAT"
        pmt_pid = ((self.section(0)[10] & 0x1F) << 8) | self.section(0)[11]
        pmt = self.section(int(np.flatnonzero(self.pid == pmt_pid)[0]))
        end = 3 + (((pmt[1] & 0x0F) << 8) | pmt[2]) - 4
        pos = 12 + (((pmt[10] & 0x0F) << 8) | pmt[11])
        while pos < end:
            stream_type = pmt[pos]
            pid = ((pmt[pos + 1] & 0x1F) << 8) | pmt[pos + 2]
            if stream_type in (0x1B, 0x24):
                return pid
            pos += 5 + (((pmt[pos + 3] & 0x0F) << 8) | pmt[pos + 4])
        raise AssertionError("PMT lists no video stream")


# --- helpers: the gateway --------------------------------------------------------------------
