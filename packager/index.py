"""MediaIndex: what the packager knows about one MP4 file, as compact per-sample arrays.

Timestamps follow the convention of FFmpeg's MP4 demuxer (and so PyAV's): the edit list is
applied as a constant shift, so with B-frames the first decode time is negative and the first
presentation time is zero. Every later stage works on this one timeline.

The index is cached as bytes (``to_bytes``/``from_bytes``), never as pickled objects; the format
carries ``INDEX_VERSION`` so a cache never hands an old layout to new code.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import msgspec
import numpy as np
import numpy.typing as npt

from backends.errors import BadMedia

INDEX_VERSION = 1
_MAGIC = b"CSIX"
_HEADER = struct.Struct(">4sHI")

TrackKind = Literal["video", "audio"]

I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]
U32 = npt.NDArray[np.uint32]
Bools = npt.NDArray[np.bool_]


class TrackInfo(msgspec.Struct, frozen=True, kw_only=True):
    track_id: int
    kind: TrackKind
    codec: str  # sample entry type: avc1, avc3, hvc1, hev1, mp4a
    timescale: int
    sample_entry: bytes  # the whole stsd entry box, copied verbatim into init segments
    codec_config: bytes  # avcC / hvcC payload, or the AAC AudioSpecificConfig
    end_dts: int  # decode time just after the last sample
    # The presentation window (edit list aware): AAC priming lies before its start.
    presentation_start: int
    presentation_end: int
    width: int = 0  # display size, from tkhd
    height: int = 0
    matrix: bytes = b""
    sample_rate: int = 0
    channels: int = 0
    language: str = "und"


@dataclass(frozen=True, eq=False)
class Track:
    info: TrackInfo
    dts: I64
    cto: I32  # composition offset: pts = dts + cto
    size: U32
    offset: I64
    sync: Bools

    @property
    def count(self) -> int:
        return int(self.dts.shape[0])

    @cached_property
    def pts(self) -> I64:
        return self.dts + self.cto.astype(np.int64)

    @cached_property
    def durations(self) -> I64:
        return np.diff(self.dts, append=np.int64(self.info.end_dts))

    @cached_property
    def sync_indices(self) -> I64:
        return np.flatnonzero(self.sync).astype(np.int64)

    @property
    def nbytes(self) -> int:
        arrays = (self.dts, self.cto, self.size, self.offset, self.sync)
        return sum(a.nbytes for a in arrays) + len(self.info.sample_entry) + 512


class _Header(msgspec.Struct, frozen=True):
    file_size: int
    major_brand: str
    tracks: list[TrackInfo]
    counts: list[int]


_FIELDS: tuple[tuple[str, str], ...] = (
    ("dts", "<i8"),
    ("offset", "<i8"),
    ("cto", "<i4"),
    ("size", "<u4"),
    ("sync", "|b1"),
)


@dataclass(frozen=True, eq=False)
class MediaIndex:
    file_size: int
    major_brand: str
    tracks: tuple[Track, ...]

    @property
    def video(self) -> Track | None:
        return next((t for t in self.tracks if t.info.kind == "video"), None)

    @property
    def audio(self) -> Track | None:
        return next((t for t in self.tracks if t.info.kind == "audio"), None)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tracks) + 256

    def to_bytes(self) -> bytes:
        header = msgspec.msgpack.encode(
            _Header(
                self.file_size,
                self.major_brand,
                [t.info for t in self.tracks],
                [t.count for t in self.tracks],
            )
        )
        parts = [_HEADER.pack(_MAGIC, INDEX_VERSION, len(header)), header]
        for track in self.tracks:
            for name, dtype in _FIELDS:
                parts.append(np.ascontiguousarray(getattr(track, name), dtype=dtype).tobytes())
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> MediaIndex:
        if len(data) < _HEADER.size:
            raise BadMedia("index blob too short")
        magic, version, header_len = _HEADER.unpack_from(data)
        if magic != _MAGIC or version != INDEX_VERSION:
            raise BadMedia(f"index blob has version {version}, expected {INDEX_VERSION}")
        pos = _HEADER.size + header_len
        header = msgspec.msgpack.decode(data[_HEADER.size : pos], type=_Header)
        tracks = []
        for info, count in zip(header.tracks, header.counts, strict=True):
            arrays = {}
            for name, dtype in _FIELDS:
                if pos + count * np.dtype(dtype).itemsize > len(data):
                    raise BadMedia("index blob truncated")
                array = np.frombuffer(data, dtype=np.dtype(dtype), count=count, offset=pos)
                arrays[name] = array.astype(np.dtype(dtype).newbyteorder("="), copy=False)
                pos += array.nbytes
            tracks.append(Track(info=info, **arrays))
        return cls(header.file_size, header.major_brand, tuple(tracks))
