"""fMP4/CMAF: the init segment and media segments, written by our own code.

A media segment is one or more fragments (one per GOP of at least a second); each fragment is a
``moof`` (mfhd; per track a traf with tfhd, tfdt carrying the absolute decode time, and one trun)
followed by an ``mdat`` that is the sample bytes exactly as read from the source, video first.
The moof is a few hundred bytes of arithmetic on the index, so a segment costs little more than
reading its samples, and its size is known before any byte is read.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

import numpy as np

from packager.boxes import box, full_box
from packager.index import I64, MediaIndex, Track
from packager.mux import TIMELINE_OFFSET_SECONDS, SegmentBody
from packager.samples import SampleSource, TrackSlice, fragment_slices
from packager.segmenter import SegmentPlan

_MATRIX = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
_TFHD_BASE_IS_MOOF = 0x020000
_TFHD_DEFAULT_FLAGS = 0x000020
_TRUN_DATA_OFFSET = 0x000001
_TRUN_DURATION = 0x000100
_TRUN_SIZE = 0x000200
_TRUN_FLAGS = 0x000400
_TRUN_CTO = 0x000800
SYNC_FLAGS = 0x02000000  # sample_depends_on = 2: an I-frame / independent audio frame
NON_SYNC_FLAGS = 0x01010000  # sample_depends_on = 1, sample_is_non_sync_sample = 1

_VIDEO_ENTRY = np.dtype([("duration", ">u4"), ("size", ">u4"), ("flags", ">u4"), ("cto", ">i4")])
_AUDIO_ENTRY = np.dtype([("duration", ">u4"), ("size", ">u4")])
_MFHD_SIZE = 16
_TRAF_FIXED = 8 + 16 + 20 + 20  # traf header, tfhd, tfdt v1, trun header with data offset
_AUDIO_TFHD_EXTRA = 4  # default_sample_flags


def content_type(index: MediaIndex) -> str:
    return "video/mp4" if index.video is not None else "audio/mp4"


def _track_id(track: Track) -> int:
    return 1 if track.info.kind == "video" else 2


def _trak(track: Track) -> bytes:
    info = track.info
    video = info.kind == "video"
    tkhd = full_box(
        b"tkhd",
        0,
        3,  # enabled, in movie
        struct.pack(">IIIII", 0, 0, _track_id(track), 0, 0),
        bytes(8),
        struct.pack(">hhhH", 0, 0, 0 if video else 0x0100, 0),
        info.matrix if len(info.matrix) == 36 else _MATRIX,
        struct.pack(">II", info.width << 16, info.height << 16),
    )
    lang = info.language if len(info.language) == 3 else "und"
    packed = sum((ord(c) - 0x60) << shift for c, shift in zip(lang, (10, 5, 0), strict=True))
    mdhd = full_box(b"mdhd", 0, 0, struct.pack(">IIIIHH", 0, 0, info.timescale, 0, packed, 0))
    handler = b"vide" if video else b"soun"
    name = b"ClipSync Video\x00" if video else b"ClipSync Audio\x00"
    hdlr = full_box(b"hdlr", 0, 0, bytes(4), handler, bytes(12), name)
    media_header = full_box(b"vmhd", 0, 1, bytes(8)) if video else full_box(b"smhd", 0, 0, bytes(4))
    dinf = box(b"dinf", full_box(b"dref", 0, 0, struct.pack(">I", 1), full_box(b"url ", 0, 1)))
    stbl = box(
        b"stbl",
        full_box(b"stsd", 0, 0, struct.pack(">I", 1), info.sample_entry),
        full_box(b"stts", 0, 0, bytes(4)),
        full_box(b"stsc", 0, 0, bytes(4)),
        full_box(b"stsz", 0, 0, bytes(8)),
        full_box(b"stco", 0, 0, bytes(4)),
    )
    minf = box(b"minf", media_header, dinf, stbl)
    return box(b"trak", tkhd, box(b"mdia", mdhd, hdlr, minf))


def init_segment(index: MediaIndex) -> bytes:
    ftyp = box(b"ftyp", b"iso6", struct.pack(">I", 0), b"iso6cmfcmp41")
    mvhd = full_box(
        b"mvhd",
        0,
        0,
        struct.pack(">IIII", 0, 0, 1000, 0),
        struct.pack(">IH", 0x00010000, 0x0100),
        bytes(10),
        _MATRIX,
        bytes(24),
        struct.pack(">I", 3),
    )
    traks = [_trak(t) for t in index.tracks]
    trex = [
        full_box(b"trex", 0, 0, struct.pack(">IIIII", _track_id(t), 1, 0, 0, 0))
        for t in index.tracks
    ]
    return ftyp + box(b"moov", mvhd, *traks, box(b"mvex", *trex))


def _moof_size(pieces: list[TrackSlice]) -> int:
    size = 8 + _MFHD_SIZE
    for piece in pieces:
        size += _TRAF_FIXED
        if piece.track.info.kind == "video":
            size += piece.count * _VIDEO_ENTRY.itemsize
        else:
            size += _AUDIO_TFHD_EXTRA + piece.count * _AUDIO_ENTRY.itemsize
    return size


def _traf(piece: TrackSlice, data_offset: int) -> bytes:
    track, first, end = piece.track, piece.first, piece.end
    info = track.info
    decode_time = int(track.dts[first]) + TIMELINE_OFFSET_SECONDS * info.timescale
    tfdt = full_box(b"tfdt", 1, 0, struct.pack(">Q", decode_time))
    if info.kind == "video":
        entries = np.empty(piece.count, dtype=_VIDEO_ENTRY)
        entries["duration"] = track.durations[first:end]
        entries["size"] = track.size[first:end]
        entries["flags"] = np.where(track.sync[first:end], SYNC_FLAGS, NON_SYNC_FLAGS)
        cto = track.cto[first:end]
        entries["cto"] = cto
        version = 1 if piece.count and int(cto.min()) < 0 else 0
        flags = _TRUN_DATA_OFFSET | _TRUN_DURATION | _TRUN_SIZE | _TRUN_FLAGS | _TRUN_CTO
        tfhd = full_box(b"tfhd", 0, _TFHD_BASE_IS_MOOF, struct.pack(">I", _track_id(track)))
    else:
        entries = np.empty(piece.count, dtype=_AUDIO_ENTRY)
        entries["duration"] = track.durations[first:end]
        entries["size"] = track.size[first:end]
        version = 0
        flags = _TRUN_DATA_OFFSET | _TRUN_DURATION | _TRUN_SIZE
        tfhd = full_box(
            b"tfhd",
            0,
            _TFHD_BASE_IS_MOOF | _TFHD_DEFAULT_FLAGS,
            struct.pack(">II", _track_id(track), SYNC_FLAGS),
        )
    trun = full_box(
        b"trun", version, flags, struct.pack(">Ii", piece.count, data_offset), entries.tobytes()
    )
    return box(b"traf", tfhd, tfdt, trun)


def _fragment(sequence: int, pieces: list[TrackSlice]) -> tuple[bytes, int]:
    """(moof + mdat header, mdat payload size) of one fragment."""
    moof_size = _moof_size(pieces)
    offset = moof_size + 8
    trafs = []
    payload = 0
    for piece in pieces:
        trafs.append(_traf(piece, offset + payload))
        payload += piece.nbytes
    moof = box(b"moof", full_box(b"mfhd", 0, 0, struct.pack(">I", sequence)), *trafs)
    assert len(moof) == moof_size, "moof size arithmetic and writer disagree"
    return moof + struct.pack(">I4s", 8 + payload, b"mdat"), payload


class Layout(NamedTuple):
    """Where every byte of a segment goes: moof headers, and each run of sample bytes."""

    size: int
    headers: list[tuple[int, int, bytes]]  # (fragment, position, moof + mdat header)
    starts: I64  # file offsets of the sample runs
    ends: I64
    targets: I64  # position of each run in the segment


def layout(index: MediaIndex, plan: SegmentPlan, segment: int) -> Layout:
    headers = []
    starts, ends, targets = [], [], []
    pos = 0
    for fragment in plan.fragments(segment):
        pieces = [p for p in fragment_slices(index, plan, fragment) if p.count]
        header, _ = _fragment(fragment + 1, pieces)
        headers.append((fragment, pos, header))
        pos += len(header)
        for piece in pieces:
            first, last = piece.runs()
            lengths = last - first
            starts.append(first)
            ends.append(last)
            targets.append(pos + np.cumsum(lengths) - lengths)
            pos += int(lengths.sum())
    empty = np.zeros(0, dtype=np.int64)

    def joined(arrays: list[I64]) -> I64:
        return np.concatenate(arrays) if arrays else empty

    return Layout(pos, headers, joined(starts), joined(ends), joined(targets))


def prepared(where: Layout) -> bytearray:
    """The segment's buffer with every moof/mdat header in place, sample bytes still to come."""
    out = bytearray(where.size)
    for _, pos, header in where.headers:
        out[pos : pos + len(header)] = header
    return out


def write_segment(
    index: MediaIndex, plan: SegmentPlan, segment: int, source: SampleSource
) -> SegmentBody:
    """The segment from sample bytes already read (``packager.reader`` reads straight into place
    instead, which saves a copy on the hot path)."""
    where = layout(index, plan, segment)
    out = prepared(where)
    views = source.views(where.starts, where.ends)
    for view, pos in zip(views, where.targets.tolist(), strict=True):
        out[pos : pos + len(view)] = view
    return SegmentBody([out], where.size)


def segment_sizes(index: MediaIndex, plan: SegmentPlan) -> I64:
    """Exact byte size of every segment, computed from the index alone."""
    frag_sizes = np.zeros(plan.frag_ms.shape[0] - 1, dtype=np.int64)
    frag_sizes += 8 + _MFHD_SIZE + 8
    for track, bounds in ((index.video, plan.video), (index.audio, plan.audio)):
        if track is None or bounds is None:
            continue
        cumulative = np.concatenate(([0], np.cumsum(track.size, dtype=np.int64)))
        counts = np.diff(bounds)
        entry = _VIDEO_ENTRY.itemsize if track.info.kind == "video" else _AUDIO_ENTRY.itemsize
        extra = 0 if track.info.kind == "video" else _AUDIO_TFHD_EXTRA
        nonempty = counts > 0
        frag_sizes += np.where(nonempty, _TRAF_FIXED + extra + counts * entry, 0)
        frag_sizes += np.diff(cumulative[bounds])
    per_segment = np.add.reduceat(frag_sizes, plan.seg_frags[:-1])
    return per_segment.astype(np.int64)


def iframe_ranges(index: MediaIndex, plan: SegmentPlan, segment: int) -> list[tuple[int, int, int]]:
    """(fragment, byte offset in the segment, length) covering each fragment's moof through the
    end of its keyframe: what an I-frame playlist's BYTERANGE points at."""
    video = index.video
    if video is None or plan.video is None:
        return []
    return [
        (fragment, pos, len(header) + int(video.size[plan.video[fragment]]))
        for fragment, pos, header in layout(index, plan, segment).headers
    ]
