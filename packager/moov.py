"""Parse a ``moov`` box into a MediaIndex. Pure: bytes in, index out.

Sample tables are expanded with numpy, so a two-hour file's moov (hundreds of thousands of samples)
parses in milliseconds. Every count is checked against the data that backs it before anything
is allocated from it: a hostile stsz cannot make us allocate more than the file could hold.
"""

from __future__ import annotations

import struct

import numpy as np

from backends.errors import BadMedia, UnsupportedMedia
from packager import boxes
from packager.boxes import Box
from packager.codecs import parse_audio_specific_config, parse_esds
from packager.index import I64, MediaIndex, Track, TrackInfo, TrackKind

VIDEO_CODECS = frozenset({"avc1", "avc3", "hvc1", "hev1"})
AUDIO_CODECS = frozenset({"mp4a"})
_CONFIG_BOX = {"avc1": "avcC", "avc3": "avcC", "hvc1": "hvcC", "hev1": "hvcC"}

Buf = bytes | memoryview


class _Ctx:
    """What a track parse needs to know about its surroundings."""

    def __init__(self, buf: Buf, file_size: int, movie_timescale: int) -> None:
        self.buf = buf
        self.file_size = file_size
        self.movie_timescale = movie_timescale


def _u32(buf: Buf, pos: int) -> int:
    value: int = struct.unpack_from(">I", buf, pos)[0]
    return value


def _table(buf: Buf, box: Box, header: int, fields: int, dtype: str, name: str) -> np.ndarray:
    """Read an entry_count-prefixed table of ``fields`` columns after ``header`` bytes."""
    if box.body + header + 4 > box.end:
        raise BadMedia(f"{name} box is cut off")
    count = _u32(buf, box.body + header)
    start = box.body + header + 4
    itemsize = np.dtype(dtype).itemsize * fields
    if count * itemsize > box.end - start:
        raise BadMedia(f"{name} declares {count} entries but holds {(box.end - start) // itemsize}")
    data = np.frombuffer(buf, dtype=dtype, count=count * fields, offset=start)
    return data.reshape(count, fields) if fields > 1 else data


def _version(buf: Buf, box: Box) -> int:
    if box.body + 4 > box.end:
        raise BadMedia(f"{box.type} box is cut off")
    return int(buf[box.body])


def _runs(counts: np.ndarray, values: np.ndarray, total: int, name: str) -> np.ndarray:
    counts = counts.astype(np.int64)
    covered = int(counts.sum())
    if covered != total:
        raise BadMedia(f"{name} covers {covered} samples but the track has {total}")
    return np.repeat(values, counts)


def _sizes(ctx: _Ctx, stbl: Box) -> np.ndarray:
    buf = ctx.buf
    stsz = boxes.find(buf, stbl.body, stbl.end, "stsz")
    if stsz is not None:
        if stsz.body + 12 > stsz.end:
            raise BadMedia("stsz box is cut off")
        constant, count = struct.unpack_from(">II", buf, stsz.body + 4)
        if constant:
            if count * constant > ctx.file_size:
                raise BadMedia(
                    f"stsz declares {count} samples of {constant} bytes: more than the file"
                )
            return np.full(count, constant, dtype=np.uint32)
        return _table(buf, stsz, 8, 1, ">u4", "stsz").astype(np.uint32)
    stz2 = boxes.find(buf, stbl.body, stbl.end, "stz2")
    if stz2 is None:
        raise BadMedia("sample table has neither stsz nor stz2")
    if stz2.body + 12 > stz2.end:
        raise BadMedia("stz2 box is cut off")
    field_size = buf[stz2.body + 7]
    count = _u32(buf, stz2.body + 8)
    start = stz2.body + 12
    if field_size not in (4, 8, 16) or (count * field_size + 7) // 8 > stz2.end - start:
        raise BadMedia("stz2 box is malformed")
    if field_size == 16:
        return np.frombuffer(buf, ">u2", count, start).astype(np.uint32)
    raw = np.frombuffer(buf, np.uint8, (count * field_size + 7) // 8, start)
    if field_size == 8:
        return raw.astype(np.uint32)
    nibbles = np.stack([raw >> 4, raw & 0x0F], axis=1).reshape(-1)[:count]
    return nibbles.astype(np.uint32)


def _offsets(ctx: _Ctx, stbl: Box, sizes: np.ndarray, entries: int) -> I64:
    buf = ctx.buf
    count = sizes.shape[0]
    stco = boxes.find(buf, stbl.body, stbl.end, "stco")
    co64 = boxes.find(buf, stbl.body, stbl.end, "co64")
    if stco is not None:
        chunk_offsets = _table(buf, stco, 4, 1, ">u4", "stco").astype(np.int64)
    elif co64 is not None:
        chunk_offsets = _table(buf, co64, 4, 1, ">u8", "co64").astype(np.int64)
    else:
        raise BadMedia("sample table has no chunk offsets (stco/co64)")
    stsc_box = boxes.find(buf, stbl.body, stbl.end, "stsc")
    if stsc_box is None:
        raise BadMedia("sample table has no stsc box")
    stsc = _table(buf, stsc_box, 4, 3, ">u4", "stsc").astype(np.int64)
    chunks = chunk_offsets.shape[0]
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    if stsc.shape[0] == 0 or chunks == 0:
        raise BadMedia(f"stsc/stco describe no chunks for {count} samples")
    first, per_chunk, description = stsc[:, 0], stsc[:, 1], stsc[:, 2]
    if first[0] != 1 or np.any(np.diff(first) <= 0) or first[-1] > chunks:
        raise BadMedia("stsc chunk numbers are out of order or past the last chunk")
    if np.any(per_chunk <= 0):
        raise BadMedia("stsc has a run with zero samples per chunk")
    if entries > 1 and np.any(description != 1):
        raise UnsupportedMedia(
            "tracks that switch sample descriptions mid-stream are not supported"
        )
    runs = np.diff(first, append=chunks + 1)
    chunk_samples = np.repeat(per_chunk, runs)
    ends = np.cumsum(chunk_samples)
    if ends[-1] < count:
        raise BadMedia(f"stsc/stco place {int(ends[-1])} samples but stsz has {count}")
    chunk_of = np.searchsorted(ends, np.arange(count, dtype=np.int64), side="right")
    chunk_first = (ends - chunk_samples)[chunk_of]
    before = np.concatenate(([0], np.cumsum(sizes, dtype=np.int64)[:-1]))
    offsets: I64 = chunk_offsets[chunk_of] + before - before[chunk_first]
    return offsets


def _edit_shift(ctx: _Ctx, trak: Box, timescale: int) -> tuple[int, int | None, int | None]:
    """(shift added to raw decode times, window start, window end) from the edit list.

    FFmpeg applies the first non-empty edit as a constant shift and leading empty edits as a
    delay; so do we. The window bounds are None when the file has no edit list.
    """
    buf = ctx.buf
    elst = boxes.find_path(buf, trak, "edts", "elst")
    if elst is None:
        return 0, None, None
    version = _version(buf, elst)
    if elst.body + 8 > elst.end:
        raise BadMedia("elst box is cut off")
    count = _u32(buf, elst.body + 4)
    entry = 20 if version == 1 else 12
    if count * entry > elst.end - elst.body - 8:
        raise BadMedia("elst declares more entries than it holds")
    delay = 0
    pos = elst.body + 8
    for _ in range(count):
        if version == 1:
            duration, media_time = struct.unpack_from(">Qq", buf, pos)
        else:
            duration, media_time = struct.unpack_from(">Ii", buf, pos)
        pos += entry
        scaled = duration * timescale // max(ctx.movie_timescale, 1)
        if media_time == -1:
            delay += scaled
            continue
        end = delay + scaled if scaled > 0 else None
        return delay - media_time, delay, end
    return delay, delay, None


def _sample_entry(ctx: _Ctx, stbl: Box) -> tuple[Box, int]:
    buf = ctx.buf
    stsd = boxes.find(buf, stbl.body, stbl.end, "stsd")
    if stsd is None or stsd.body + 8 > stsd.end:
        raise BadMedia("sample table has no stsd box")
    entries = _u32(buf, stsd.body + 4)
    if entries < 1:
        raise BadMedia("stsd has no sample entry")
    return boxes.parse_header(buf, stsd.body + 8, stsd.end), entries


def _video_info(ctx: _Ctx, entry: Box) -> tuple[bytes, int, int]:
    buf = ctx.buf
    if entry.body + 78 > entry.end:
        raise BadMedia(f"{entry.type} sample entry is cut off")
    width, height = struct.unpack_from(">HH", buf, entry.body + 24)
    config = boxes.find(buf, entry.body + 78, entry.end, _CONFIG_BOX[entry.type])
    if config is None:
        raise BadMedia(f"{entry.type} sample entry has no {_CONFIG_BOX[entry.type]} box")
    return bytes(buf[config.body : config.end]), width, height


def _audio_config(ctx: _Ctx, entry: Box) -> bytes:
    buf = ctx.buf
    if entry.body + 28 > entry.end:
        raise BadMedia("mp4a sample entry is cut off")
    # QuickTime sound descriptions v1/v2 carry 16/36 extra bytes before the child boxes.
    qt_version = struct.unpack_from(">H", buf, entry.body + 8)[0]
    start = entry.body + 28 + {0: 0, 1: 16, 2: 36}.get(qt_version, 0)
    esds = boxes.find(buf, start, entry.end, "esds")
    if esds is None:
        wave = boxes.find(buf, start, entry.end, "wave")
        esds = boxes.find(buf, wave.body, wave.end, "esds") if wave else None
    if esds is None:
        raise BadMedia("mp4a sample entry has no esds box")
    return parse_esds(bytes(buf[esds.body : esds.end]))


def _tkhd(ctx: _Ctx, trak: Box) -> tuple[int, int, int, bytes]:
    buf = ctx.buf
    tkhd = boxes.find(buf, trak.body, trak.end, "tkhd")
    if tkhd is None:
        raise BadMedia("track has no tkhd box")
    version = _version(buf, tkhd)
    base = tkhd.body + (36 if version == 1 else 24)
    id_pos = tkhd.body + (20 if version == 1 else 12)
    if base + 52 > tkhd.end:
        raise BadMedia("tkhd box is cut off")
    track_id = _u32(buf, id_pos)
    matrix = bytes(buf[base + 16 : base + 52])
    width, height = struct.unpack_from(">II", buf, base + 52)
    return track_id, width >> 16, height >> 16, matrix


def _mdhd(ctx: _Ctx, mdia: Box) -> tuple[int, str]:
    buf = ctx.buf
    mdhd = boxes.find(buf, mdia.body, mdia.end, "mdhd")
    if mdhd is None:
        raise BadMedia("track has no mdhd box")
    version = _version(buf, mdhd)
    pos = mdhd.body + (20 if version == 1 else 12)
    if pos + (14 if version == 1 else 10) > mdhd.end:
        raise BadMedia("mdhd box is cut off")
    timescale = _u32(buf, pos)
    lang_pos = pos + (12 if version == 1 else 8)
    packed = struct.unpack_from(">H", buf, lang_pos)[0]
    letters = [((packed >> shift) & 0x1F) + 0x60 for shift in (10, 5, 0)]
    language = (
        bytes(letters).decode("latin-1") if all(0x61 <= c <= 0x7A for c in letters) else "und"
    )
    if timescale == 0:
        raise BadMedia("track timescale is zero")
    return timescale, language


def _handler(ctx: _Ctx, mdia: Box) -> str:
    hdlr = boxes.find(ctx.buf, mdia.body, mdia.end, "hdlr")
    if hdlr is None or hdlr.body + 12 > hdlr.end:
        return ""
    return boxes.fourcc(bytes(ctx.buf[hdlr.body + 8 : hdlr.body + 12]))


def _parse_track(ctx: _Ctx, trak: Box, unsupported: list[str]) -> Track | None:
    buf = ctx.buf
    mdia = boxes.find(buf, trak.body, trak.end, "mdia")
    if mdia is None:
        raise BadMedia("track has no mdia box")
    handler = _handler(ctx, mdia)
    kind: TrackKind
    if handler == "vide":
        kind = "video"
    elif handler == "soun":
        kind = "audio"
    else:
        return None
    stbl = boxes.find_path(buf, mdia, "minf", "stbl")
    if stbl is None:
        raise BadMedia(f"{kind} track has no sample table")
    entry, entries = _sample_entry(ctx, stbl)
    if entry.type not in (VIDEO_CODECS if kind == "video" else AUDIO_CODECS):
        unsupported.append(f"{kind} codec {entry.type!r}")
        return None
    track_id, tk_width, tk_height, matrix = _tkhd(ctx, trak)
    timescale, language = _mdhd(ctx, mdia)
    width = height = sample_rate = channels = 0
    if kind == "video":
        config, width, height = _video_info(ctx, entry)
        width, height = tk_width or width, tk_height or height
    else:
        config = _audio_config(ctx, entry)
        asc = parse_audio_specific_config(config)
        sample_rate, channels = asc.sample_rate, asc.channels
    sizes = _sizes(ctx, stbl)
    count = sizes.shape[0]
    if count == 0:
        return None
    stts = boxes.find(buf, stbl.body, stbl.end, "stts")
    if stts is None:
        raise BadMedia(f"{kind} track has no stts box")
    table = _table(buf, stts, 4, 2, ">u4", "stts")
    deltas = _runs(table[:, 0], table[:, 1].astype(np.int64), count, "stts")
    ends = np.cumsum(deltas)
    raw_dts = ends - deltas
    ctts_box = boxes.find(buf, stbl.body, stbl.end, "ctts")
    if ctts_box is not None:
        # Version 0 is unsigned on paper, but writers store negative offsets in it too.
        ctts = _table(buf, ctts_box, 4, 2, ">i4", "ctts")
        cto = _runs(ctts[:, 0].view(">u4"), ctts[:, 1], count, "ctts").astype(np.int32)
    else:
        cto = np.zeros(count, dtype=np.int32)
    stss_box = boxes.find(buf, stbl.body, stbl.end, "stss")
    if stss_box is not None:
        numbers = _table(buf, stss_box, 4, 1, ">u4", "stss").astype(np.int64)
        if numbers.size and (numbers.min() < 1 or numbers.max() > count):
            raise BadMedia(f"stss names a sample outside 1..{count}")
        sync = np.zeros(count, dtype=np.bool_)
        sync[numbers - 1] = True
    else:
        sync = np.ones(count, dtype=np.bool_)
    offsets = _offsets(ctx, stbl, sizes, entries)
    last_end = int((offsets + sizes).max())
    if last_end > ctx.file_size:
        bad = int(np.argmax(offsets + sizes > ctx.file_size))
        raise BadMedia(
            f"sample {bad + 1} of the {kind} track ends at byte {int(offsets[bad] + sizes[bad])}, "
            f"past the end of the file ({ctx.file_size} bytes): truncated file or corrupt tables"
        )
    if int(offsets.min()) < 0:
        raise BadMedia(f"{kind} track has a negative sample offset")
    shift, window_start, window_end = _edit_shift(ctx, trak, timescale)
    dts = raw_dts + shift
    end_dts = int(ends[-1]) + shift
    pts = dts + cto
    natural_start, natural_end = int(pts.min()), int((pts + deltas).max())
    start = natural_start if window_start is None else max(natural_start, window_start)
    end = natural_end if window_end is None else min(natural_end, window_end)
    if end <= start:
        raise BadMedia(f"the edit list of the {kind} track leaves nothing to present")
    info = TrackInfo(
        track_id=track_id,
        kind=kind,
        codec=entry.type,
        timescale=timescale,
        sample_entry=bytes(buf[entry.start : entry.end]),
        codec_config=config,
        end_dts=end_dts,
        presentation_start=start,
        presentation_end=end,
        width=width,
        height=height,
        matrix=matrix,
        sample_rate=sample_rate,
        channels=channels,
        language=language,
    )
    return Track(info=info, dts=dts, cto=cto, size=sizes, offset=offsets, sync=sync)


def parse_moov(moov: Buf, file_size: int, major_brand: str = "") -> MediaIndex:
    """Build the index from the bytes of one moov box (header included)."""
    top = boxes.parse_header(moov, 0, len(moov))
    if top.type != "moov":
        raise BadMedia(f"expected a moov box, found {top.type!r}")
    if boxes.find(moov, top.body, top.end, "mvex") is not None:
        raise UnsupportedMedia("fragmented MP4 is not supported: remux it with moov and one mdat")
    mvhd = boxes.find(moov, top.body, top.end, "mvhd")
    if mvhd is None:
        raise BadMedia("moov has no mvhd box")
    version = _version(moov, mvhd)
    ts_pos = mvhd.body + (20 if version == 1 else 12)
    if ts_pos + 4 > mvhd.end:
        raise BadMedia("mvhd box is cut off")
    ctx = _Ctx(moov, file_size, _u32(moov, ts_pos))
    unsupported: list[str] = []
    video: Track | None = None
    audio: Track | None = None
    for trak in boxes.children(moov, top.body, top.end):
        if trak.type != "trak":
            continue
        track = _parse_track(ctx, trak, unsupported)
        if track is None:
            continue
        if track.info.kind == "video" and video is None:
            video = track
        elif track.info.kind == "audio" and audio is None:
            audio = track
    tracks = tuple(t for t in (video, audio) if t is not None)
    if not tracks:
        found = ", ".join(unsupported) if unsupported else "no audio or video samples"
        raise UnsupportedMedia(f"no playable track: found {found}; supported: H.264, HEVC, AAC")
    return MediaIndex(file_size=file_size, major_brand=major_brand, tracks=tracks)
