"""Synthetic MP4 files with enormous sample tables, built box by box (no media encoding).

The mdat is sparse (a hole in the file), so a "two-hour" or "100 MB moov" file costs seconds.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from packager.boxes import box, full_box
from packager.index import TrackInfo


def _trak(info: TrackInfo, count: int, first_offset: int, sample_size: int, gop: int) -> bytes:
    timescale = info.timescale
    delta = timescale // 30
    sizes = np.full(count, sample_size, dtype=">u4")
    offsets = (first_offset + np.arange(count, dtype=np.int64) * sample_size).astype(">u8")
    # Alternating composition offsets defeat run-length coding, as real B-frame streams do.
    cto = np.where(np.arange(count) % 2 == 0, 2 * delta, 0).astype(">u4")
    ctts = np.stack([np.ones(count, dtype=np.uint32), cto], axis=1).astype(">u4")
    syncs = (np.arange(0, count, gop, dtype=np.int64) + 1).astype(">u4")
    stbl = box(
        b"stbl",
        full_box(b"stsd", 0, 0, struct.pack(">I", 1), info.sample_entry),
        full_box(b"stts", 0, 0, struct.pack(">III", 1, count, delta)),
        full_box(b"ctts", 0, 0, struct.pack(">I", count), ctts.tobytes()),
        full_box(b"stss", 0, 0, struct.pack(">I", syncs.size), syncs.tobytes()),
        full_box(b"stsc", 0, 0, struct.pack(">IIII", 1, 1, 1, 1)),
        full_box(b"stsz", 0, 0, struct.pack(">II", 0, count), sizes.tobytes()),
        full_box(b"co64", 0, 0, struct.pack(">I", count), offsets.tobytes()),
    )
    tkhd = full_box(b"tkhd", 0, 3, bytes(20), bytes(16), info.matrix, struct.pack(">II", 0, 0))
    mdhd = full_box(b"mdhd", 0, 0, struct.pack(">IIIIHH", 0, 0, timescale, 0, 0x55C4, 0))
    hdlr = full_box(b"hdlr", 0, 0, bytes(4), b"vide", bytes(12), b"v\x00")
    minf = box(b"minf", full_box(b"vmhd", 0, 1, bytes(8)), stbl)
    return box(b"trak", tkhd, box(b"mdia", mdhd, hdlr, minf))


def write_big_moov(
    path: Path, video: TrackInfo, count: int, sample_size: int = 100, gop: int = 60
) -> int:
    """Write ftyp + sparse mdat + moov (at the end) with ``count`` video samples; moov size back."""
    ftyp = box(b"ftyp", b"isom", struct.pack(">I", 512), b"isomiso2avc1mp41")
    mdat_size = 16 + count * sample_size
    first_offset = len(ftyp) + 16
    mvhd = full_box(b"mvhd", 0, 0, struct.pack(">IIII", 0, 0, 1000, 0), bytes(80))
    moov = box(b"moov", mvhd, _trak(video, count, first_offset, sample_size, gop))
    with path.open("wb") as out:
        out.write(ftyp)
        out.write(struct.pack(">I4sQ", 1, b"mdat", mdat_size))
        out.seek(len(ftyp) + mdat_size)
        out.write(moov)
    return len(moov)
