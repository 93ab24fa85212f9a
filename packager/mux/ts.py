"""MPEG-TS: HLS media segments, written by our own code.

A segment is a PAT and a PMT packet, then PES packets in decode-time order: one video PES per
access unit (Annex-B, with an AUD and, before every keyframe, the parameter sets from the codec
configuration) and audio PES of up to ``AUDIO_FRAMES_PER_PES`` ADTS frames. Every PES starts on a
packet boundary (the last packet of each is padded with adaptation-field stuffing), and the first
packet of every video PES carries the PCR (of every audio PES when there is no video).

Sizes are known before any byte is read: a 4-byte NAL length field becomes a 4-byte start code,
AUD NAL units found in a sample are dropped and replaced by trailing zero bytes, so an access unit
is always ``AUD + parameter sets (keyframes) + sample size`` bytes. The one exception is the rare
avcC/hvcC with 1- or 2-byte length fields: the stream is still correct, but it is larger than
``segment_sizes`` predicts (and so are its continuity counters and I-frame ranges).

Continuity counters run on across segments: a segment's counters start at the number of packets
its PID had in all earlier segments, from the same size model, so segments read in order form
one continuous stream.
"""

from __future__ import annotations

import weakref
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from backends.errors import BadMedia, UnsupportedMedia
from packager.codecs import parse_audio_specific_config
from packager.index import I64, Bools, MediaIndex, Track, TrackInfo
from packager.mux import TIMELINE_OFFSET_SECONDS, SegmentBody
from packager.samples import SampleSource
from packager.segmenter import SegmentPlan

U8 = npt.NDArray[np.uint8]

PACKET_SIZE = 188
PSI_SIZE = 2 * PACKET_SIZE  # PAT + PMT at the start of every segment
AUDIO_FRAMES_PER_PES = 4  # ~85 ms of AAC: PCR spacing stays under 100 ms for audio-only files
_PAYLOAD = PACKET_SIZE - 4
_PCR_FIELD = 8  # adaptation field: length, flags, 6 bytes of PCR
_PCR_DELAY = 9000  # PCR = DTS - 100 ms: never after the DTS of any PES it precedes
_PMT_PID, _VIDEO_PID, _AUDIO_PID = 0x1000, 0x100, 0x101
_AAC_STREAM_TYPE = 0x0F
_MASK33 = (1 << 33) - 1

_VIDEO_PES_PREFIX = b"\x00\x00\x01\xe0\x00\x00\x84\xc0\x0a"  # data aligned, PTS + DTS
_VIDEO_PES_HEADER = len(_VIDEO_PES_PREFIX) + 10
_AUDIO_PES_HEADER = 14  # start code, stream id, length, flags, header length, PTS
_ADTS_HEADER = 7
_START_CODE = b"\x00\x00\x00\x01"


class _VideoCodec(NamedTuple):
    stream_type: int
    hevc: bool
    length_size: int  # bytes of each NAL length field in the samples
    aud: bytes  # Annex-B access unit delimiter that opens every access unit
    parameter_sets: bytes  # Annex-B parameter sets written before every sync sample


def content_type(index: MediaIndex) -> str:
    return "video/mp2t"


# --- codec configuration -----------------------------------------------------------------------


def _read_nals(config: bytes, pos: int, count: int) -> tuple[list[bytes], int]:
    """``count`` NAL units each behind a 16-bit length, as in avcC and hvcC."""
    nals = []
    for _ in range(count):
        length = int.from_bytes(config[pos : pos + 2], "big")
        if pos + 2 + length > len(config):  # also when the length itself is cut off
            raise BadMedia("codec configuration is cut off")
        nals.append(config[pos + 2 : pos + 2 + length])
        pos += 2 + length
    return nals, pos


def _avcc(config: bytes) -> tuple[int, list[bytes]]:
    """(NAL length size, SPS and PPS) of an avcC payload."""
    if len(config) < 7:
        raise BadMedia("avcC box is too short")
    sps, pos = _read_nals(config, 6, config[5] & 0x1F)
    if pos >= len(config):
        raise BadMedia("avcC box is cut off")
    pps, _ = _read_nals(config, pos + 1, config[pos])
    return (config[4] & 3) + 1, sps + pps


def _hvcc(config: bytes) -> tuple[int, list[bytes]]:
    """(NAL length size, VPS, SPS and PPS in that order) of an hvcC payload."""
    if len(config) < 23:
        raise BadMedia("hvcC box is too short")
    by_type: dict[int, list[bytes]] = {32: [], 33: [], 34: []}
    pos = 23
    for _ in range(config[22]):
        if pos + 3 > len(config):
            raise BadMedia("hvcC box is cut off")
        nal_type, count = config[pos] & 0x3F, int.from_bytes(config[pos + 1 : pos + 3], "big")
        nals, pos = _read_nals(config, pos + 3, count)
        by_type.get(nal_type, []).extend(nals)  # SEI arrays are not repeated in band
    return (config[21] & 3) + 1, by_type[32] + by_type[33] + by_type[34]


def _video_codec(info: TrackInfo) -> _VideoCodec:
    if info.codec in ("avc1", "avc3"):
        length_size, nals = _avcc(info.codec_config)
        aud, stream_type, hevc = b"\x09\xf0", 0x1B, False  # primary_pic_type 7: any slice
    elif info.codec in ("hvc1", "hev1"):
        length_size, nals = _hvcc(info.codec_config)
        aud, stream_type, hevc = b"\x46\x01\x50", 0x24, True  # type 35, pic_type 2: I/P/B
    else:
        raise UnsupportedMedia(f"no MPEG-TS mapping for video codec {info.codec!r}")
    parameter_sets = b"".join(_START_CODE + nal for nal in nals)
    return _VideoCodec(stream_type, hevc, length_size, _START_CODE + aud, parameter_sets)


def _adts_fields(config: bytes) -> tuple[int, int, int]:
    """(profile, sampling frequency index, channel configuration) for ADTS headers."""
    asc = parse_audio_specific_config(config)
    if asc.frequency_index > 12:
        raise UnsupportedMedia(f"AAC at {asc.sample_rate} Hz cannot be carried in ADTS")
    # HE-AAC (v2) signals SBR/PS explicitly; its first rate and channels are the AAC-LC core's,
    # which ADTS carries while decoders find SBR/PS implicitly.
    profile = 1 if asc.object_type in (5, 29) else min(max(asc.object_type - 1, 0), 3)
    return profile, asc.frequency_index, asc.channels & 7


# --- the size model: PES lengths and packet counts from the index alone -----------------------


def _tracks(index: MediaIndex, plan: SegmentPlan) -> tuple[Track | None, Track | None]:
    video = index.video if plan.video is not None else None
    audio = index.audio if plan.audio is not None else None
    return video, audio


def _packet_counts(lengths: I64, first_header: int | I64) -> I64:
    """TS packets per PES; the first packet gives ``first_header`` bytes to a PCR field."""
    overflow = np.maximum(lengths - (_PAYLOAD - first_header), 0)
    counts: I64 = 1 + (overflow + _PAYLOAD - 1) // _PAYLOAD
    return counts


def _range_sums(values: I64, starts: I64, ends: I64) -> I64:
    cumulative = np.concatenate(([0], np.cumsum(values, dtype=np.int64)))
    return (cumulative[ends] - cumulative[starts]).astype(np.int64)


def _video_lengths(track: Track, codec: _VideoCodec, first: int, end: int) -> I64:
    """Predicted PES size of every access unit in [first, end)."""
    sync = track.sync[first:end].astype(np.int64) * len(codec.parameter_sets)
    fixed = _VIDEO_PES_HEADER + len(codec.aud)
    return (track.size[first:end].astype(np.int64) + sync + fixed).astype(np.int64)


def _audio_groups(bounds: I64) -> tuple[I64, I64, I64]:
    """(first frame, end frame) of every audio PES, and PES per segment, for segment bounds.

    Frames are grouped from the first frame of each segment, so a segment's grouping does not
    depend on any other segment.
    """
    counts = np.diff(bounds)
    per_segment = (counts + AUDIO_FRAMES_PER_PES - 1) // AUDIO_FRAMES_PER_PES
    segment_of = np.repeat(np.arange(counts.shape[0]), per_segment)
    first_group = np.cumsum(per_segment) - per_segment
    rank = np.arange(segment_of.shape[0], dtype=np.int64) - first_group[segment_of]
    starts = bounds[:-1][segment_of] + rank * AUDIO_FRAMES_PER_PES
    ends = np.minimum(starts + AUDIO_FRAMES_PER_PES, bounds[1:][segment_of])
    return starts.astype(np.int64), ends.astype(np.int64), per_segment.astype(np.int64)


def _audio_lengths(track: Track, starts: I64, ends: I64) -> I64:
    """PES size of every audio group: header, then an ADTS header before each raw frame."""
    if starts.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    base = int(starts[0])
    sizes = track.size[base : int(ends[-1])].astype(np.int64)
    payload = _range_sums(sizes, starts - base, ends - base)
    return (payload + (ends - starts) * _ADTS_HEADER + _AUDIO_PES_HEADER).astype(np.int64)


def _segment_packets(index: MediaIndex, plan: SegmentPlan) -> tuple[I64, I64]:
    """Packets of the video PID and of the audio PID in every segment."""
    video, audio = _tracks(index, plan)
    video_packets = audio_packets = np.zeros(plan.count, dtype=np.int64)
    if video is not None and plan.video is not None:
        codec = _video_codec(video.info)
        packets = _packet_counts(_video_lengths(video, codec, 0, video.count), _PCR_FIELD)
        bounds = plan.video[plan.seg_frags]
        video_packets = _range_sums(packets, bounds[:-1], bounds[1:])
    if audio is not None and plan.audio is not None:
        starts, ends, per_segment = _audio_groups(plan.audio[plan.seg_frags])
        lengths = _audio_lengths(audio, starts, ends)
        packets = _packet_counts(lengths, 0 if video is not None else _PCR_FIELD)
        groups = np.concatenate(([0], np.cumsum(per_segment))).astype(np.int64)
        audio_packets = _range_sums(packets, groups[:-1], groups[1:])
    return video_packets, audio_packets


_COUNTERS: weakref.WeakKeyDictionary[SegmentPlan, tuple[weakref.ref[MediaIndex], I64, I64]]
_COUNTERS = weakref.WeakKeyDictionary()


def _continuity(index: MediaIndex, plan: SegmentPlan, segment: int) -> tuple[int, int]:
    """Continuity counters of the video and audio PIDs at the start of ``segment``.

    They need the packet counts of every earlier segment, so the per-segment counts are kept
    for as long as the plan lives (a long file's model costs milliseconds, a request should not).
    """
    cached = _COUNTERS.get(plan)
    if cached is None or cached[0]() is not index:
        video, audio = _segment_packets(index, plan)
        cached = (weakref.ref(index), np.cumsum(video) - video, np.cumsum(audio) - audio)
        _COUNTERS[plan] = cached
    return int(cached[1][segment]) & 15, int(cached[2][segment]) & 15


def segment_sizes(index: MediaIndex, plan: SegmentPlan) -> I64:
    """Exact byte size of every segment, computed from the index alone."""
    video, audio = _segment_packets(index, plan)
    return (PSI_SIZE + PACKET_SIZE * (video + audio)).astype(np.int64)


# --- one segment's PES, in output order --------------------------------------------------------


def _to_90k(values: I64, timescale: int) -> I64:
    """Absolute 90 kHz time (rounded half up) of index times, on the shifted timeline."""
    whole, rest = np.divmod(
        values.astype(np.int64) + TIMELINE_OFFSET_SECONDS * timescale, timescale
    )
    ticks: I64 = whole * 90000 + (rest * 180000 + timescale) // (2 * timescale)
    return ticks


class _Units(NamedTuple):
    """A segment's PES described without media bytes: video units first, then audio."""

    first: I64  # first sample of each PES
    end: I64
    length: I64  # predicted PES bytes
    packets: I64
    dts: I64  # 90 kHz decode time of the first sample
    pts: I64  # 90 kHz presentation time of the first sample
    videos: int  # how many of the units are video
    order: I64  # unit numbers in output order


def _interleave(dts: I64, videos: int) -> I64:
    """Decode-time order (video first on ties), except that the segment opens with its keyframe
    so a player joining here gets a PCR and the IDR before anything else."""
    keys = dts.copy()
    if videos and keys.shape[0]:
        keys[0] = keys.min() - 1
    kinds = np.arange(keys.shape[0]) >= videos
    return np.lexsort((kinds, keys)).astype(np.int64)


def _segment_units(index: MediaIndex, plan: SegmentPlan, segment: int) -> _Units:
    video, audio = _tracks(index, plan)
    frags = plan.fragments(segment)
    columns: list[tuple[I64, I64, I64, I64, I64, I64]] = []
    if video is not None:
        v0, v1 = plan.samples(plan.video, frags.start, frags.stop)
        first = np.arange(v0, v1, dtype=np.int64)
        lengths = _video_lengths(video, _video_codec(video.info), v0, v1)
        scale = video.info.timescale
        dts, pts = _to_90k(video.dts[v0:v1], scale), _to_90k(video.pts[v0:v1], scale)
        columns.append((first, first + 1, lengths, _packet_counts(lengths, _PCR_FIELD), dts, pts))
    if audio is not None:
        a0, a1 = plan.samples(plan.audio, frags.start, frags.stop)
        starts, ends, _ = _audio_groups(np.array([a0, a1], dtype=np.int64))
        lengths = _audio_lengths(audio, starts, ends)
        packets = _packet_counts(lengths, 0 if video is not None else _PCR_FIELD)
        pts = _to_90k(audio.pts[starts], audio.info.timescale)
        columns.append((starts, ends, lengths, packets, pts, pts))
    first, end, length, packets, dts, pts = (np.concatenate(c) for c in zip(*columns, strict=True))
    videos = int(columns[0][0].shape[0]) if video is not None else 0
    return _Units(first, end, length, packets, dts, pts, videos, _interleave(dts, videos))


# --- bytes: PSI, PES, TS packets ---------------------------------------------------------------


def _crc32_mpeg2(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7 if crc & 0x80000000 else crc << 1) & 0xFFFFFFFF
    return crc


def _psi_packet(pid: int, table_id: int, body: bytes, counter: int) -> bytes:
    """One packet holding one PSI section (syntax 1, version 0, current) and stuffing."""
    section = bytes([table_id]) + (0xB000 | (len(body) + 9)).to_bytes(2, "big")
    section += b"\x00\x01\xc1\x00\x00" + body  # table id extension 1 (TS id / program 1)
    section += _crc32_mpeg2(section).to_bytes(4, "big")
    header = bytes([0x47, 0x40 | pid >> 8, pid & 0xFF, 0x10 | (counter & 15), 0])
    return (header + section).ljust(PACKET_SIZE, b"\xff")


def _psi(index: MediaIndex, plan: SegmentPlan, segment: int) -> bytes:
    video, audio = _tracks(index, plan)
    streams = b""
    if video is not None:
        streams += bytes([_video_codec(video.info).stream_type]) + b"\xe1\x00\xf0\x00"
    if audio is not None:
        streams += bytes([_AAC_STREAM_TYPE]) + b"\xe1\x01\xf0\x00"
    pcr_pid = _VIDEO_PID if video is not None else _AUDIO_PID
    pmt = (0xE000 | pcr_pid).to_bytes(2, "big") + b"\xf0\x00" + streams
    pat = b"\x00\x01" + (0xE000 | _PMT_PID).to_bytes(2, "big")
    return _psi_packet(0, 0x00, pat, segment) + _psi_packet(_PMT_PID, 0x02, pmt, segment)


def _timestamp(prefix: int, value: int) -> bytes:
    """A 33-bit PTS/DTS field: 4-bit prefix, then 3, 15 and 15 bits each closed by a marker."""
    v = value & _MASK33
    high, middle, low = v >> 30, (v >> 15) & 0x7FFF, v & 0x7FFF
    fields = prefix << 36 | high << 33 | 1 << 32 | middle << 17 | 1 << 16 | low << 1 | 1
    return fields.to_bytes(5, "big")


def _is_aud(header: int, hevc: bool) -> bool:
    return (header >> 1) & 0x3F == 35 if hevc else header & 0x1F == 9


def _access_unit(
    sample: memoryview, codec: _VideoCodec, sync: bool, expected: int
) -> list[bytes | memoryview]:
    """One sample as Annex-B: AUD, parameter sets on sync samples, its NAL units (minus any AUD),
    then zero bytes (trailing_zero_8bits) up to the ``expected`` size of the size model."""
    pieces: list[bytes | memoryview] = [codec.aud]
    if sync:
        pieces.append(codec.parameter_sets)
    size = sum(len(p) for p in pieces)
    pos, width = 0, codec.length_size
    while pos + width <= len(sample):
        length = int.from_bytes(sample[pos : pos + width], "big")
        pos += width
        if pos + length > len(sample):
            raise BadMedia("a NAL unit runs past the end of its sample")
        if length and not _is_aud(sample[pos], codec.hevc):
            pieces += (_START_CODE, sample[pos : pos + length])
            size += len(_START_CODE) + length
        pos += length
    if size < expected:
        pieces.append(bytes(expected - size))
    return pieces


def _video_pes(
    track: Track, codec: _VideoCodec, units: _Units, unit: int, source: SampleSource
) -> bytes:
    i = int(units.first[unit])
    start = int(track.offset[i])
    sample = source.view(start, start + int(track.size[i]))
    pts, dts = int(units.pts[unit]), int(units.dts[unit])
    header = _VIDEO_PES_PREFIX + _timestamp(3, pts) + _timestamp(1, dts)
    expected = int(units.length[unit]) - _VIDEO_PES_HEADER
    return b"".join([header, *_access_unit(sample, codec, bool(track.sync[i]), expected)])


def _adts_headers(track: Track, first: int, end: int) -> bytes:
    """The 7-byte ADTS header (no CRC) of every frame in [first, end), concatenated."""
    profile, frequency, channels = _adts_fields(track.info.codec_config)
    length = track.size[first:end].astype(np.int64) + _ADTS_HEADER
    if length.shape[0] and int(length.max()) > 0x1FFF:
        raise BadMedia("an AAC frame is too large for an ADTS header")
    headers = np.empty((length.shape[0], _ADTS_HEADER), dtype=np.uint8)
    headers[:, 0:2] = (0xFF, 0xF1)  # sync word, MPEG-4, layer 0, no CRC
    headers[:, 2] = (profile << 6) | (frequency << 2) | (channels >> 2)
    headers[:, 3] = ((channels & 3) << 6) | (length >> 11)
    headers[:, 4] = (length >> 3) & 0xFF
    headers[:, 5] = ((length & 7) << 5) | 0x1F  # buffer fullness 0x7FF: variable rate
    headers[:, 6] = 0xFC
    return headers.tobytes()


def _audio_pes(track: Track, units: _Units, unit: int, adts: bytes, source: SampleSource) -> bytes:
    """One audio PES; ``adts`` holds the headers of the segment's frames from ``units.first[0]``
    on (audio units are the segment's last)."""
    first, end = int(units.first[unit]), int(units.end[unit])
    base = int(units.first[units.videos])
    length = int(units.length[unit]) - 6
    parts: list[bytes | memoryview] = [
        b"\x00\x00\x01\xc0",
        (length if length <= 0xFFFF else 0).to_bytes(2, "big"),
        b"\x84\x80\x05",  # data aligned, PTS only
        _timestamp(2, int(units.pts[unit])),
    ]
    for i in range(first, end):
        offset = int(track.offset[i])
        parts += (
            adts[(i - base) * 7 : (i - base + 1) * 7],
            source.view(offset, offset + int(track.size[i])),
        )
    return b"".join(parts)


def _pcr(value: int) -> bytes:
    base = value & _MASK33
    return (base << 15 | 0x7E00).to_bytes(6, "big")  # 6 reserved bits set, extension 0


def _adaptation(size: int, pcr: int | None, random_access: bool) -> bytes:
    """An adaptation field of exactly ``size`` bytes (0: none), with the PCR if given."""
    if size == 0:
        return b""
    if size == 1:
        return b"\x00"
    flags = (0x40 if random_access else 0) | (0x10 if pcr is not None else 0)
    body = bytes([flags]) + (_pcr(pcr) if pcr is not None else b"")
    return bytes([size - 1]) + body + b"\xff" * (size - 1 - len(body))


def _payload_areas(
    pes: bytes, packets: int, pcr: int | None, random_access: bool
) -> list[bytes | memoryview]:
    """What follows the 4-byte headers of a PES's packets, 184 bytes each, concatenated: the
    first packet opens with the PCR, the last with stuffing so that the PES ends with it."""
    view = memoryview(pes)
    head = _PCR_FIELD if pcr is not None else 0
    if packets == 1:
        return [_adaptation(_PAYLOAD - len(pes), pcr, random_access), view]
    tail = packets * _PAYLOAD - _PAYLOAD - head  # where the last packet's payload begins
    stuffing = _adaptation(_PAYLOAD - (len(pes) - tail), None, False)
    return [_adaptation(head, pcr, random_access), view[:tail], stuffing, view[tail:]]


def _packet_headers(
    pids: I64, counts: I64, adaptation: tuple[Bools, Bools], counters: dict[int, int]
) -> U8:
    """The 4-byte header of every packet of PES with ``counts`` packets each: PUSI on their
    first packets, adaptation_field_control from (first packet has one, last packet has one),
    and per PID a continuity counter running on from ``counters``."""
    total = int(counts.sum())
    firsts = np.cumsum(counts) - counts
    pid = np.repeat(pids, counts)
    counter = np.zeros(total, dtype=np.int64)
    for value, start in counters.items():
        mine = pid == value
        counter[mine] = start + np.arange(int(np.count_nonzero(mine)))
    has_field = np.zeros(total, dtype=np.int64)
    has_field[firsts] = adaptation[0]
    has_field[firsts + counts - 1] |= adaptation[1]
    headers = np.empty((total, 4), dtype=np.uint8)
    headers[:, 0] = 0x47
    headers[:, 1] = pid >> 8
    headers[firsts, 1] |= 0x40  # payload_unit_start_indicator
    headers[:, 2] = pid & 0xFF
    headers[:, 3] = 0x10 | (has_field << 5) | (counter & 15)
    return headers


def _transport_packets(
    pes: list[bytes],
    pids: I64,
    pcrs: list[int | None],
    random_access: Bools,
    counters: dict[int, int],
) -> U8:
    """Cut every PES into packets (n x 188), headers built for all packets at once."""
    lengths = np.array([len(p) for p in pes], dtype=np.int64)
    heads = np.array([0 if pcr is None else _PCR_FIELD for pcr in pcrs], dtype=np.int64)
    counts = _packet_counts(lengths, heads)
    areas: list[bytes | memoryview] = []
    first_field, last_field = [], []
    for data, n, pcr, access in zip(
        pes, counts.tolist(), pcrs, random_access.tolist(), strict=True
    ):
        parts = _payload_areas(data, n, pcr, access)
        first_field.append(bool(parts[0]))
        last_field.append(n > 1 and bool(parts[2]))
        areas += parts
    fields = (np.array(first_field, dtype=np.bool_), np.array(last_field, dtype=np.bool_))
    out = np.empty((int(counts.sum()), PACKET_SIZE), dtype=np.uint8)
    out[:, :4] = _packet_headers(pids, counts, fields, counters)
    out[:, 4:] = np.frombuffer(b"".join(areas), dtype=np.uint8).reshape(-1, _PAYLOAD)
    return out


def _pes_in_order(
    index: MediaIndex, plan: SegmentPlan, units: _Units, source: SampleSource
) -> list[bytes]:
    video, audio = _tracks(index, plan)
    codec = _video_codec(video.info) if video is not None else None
    adts = b""
    if audio is not None and units.first.shape[0] > units.videos:
        adts = _adts_headers(audio, int(units.first[units.videos]), int(units.end[-1]))
    pes: list[bytes] = []
    for unit in units.order.tolist():
        if unit < units.videos and video is not None and codec is not None:
            pes.append(_video_pes(video, codec, units, unit, source))
        elif audio is not None:
            pes.append(_audio_pes(audio, units, unit, adts, source))
    return pes


def write_segment(
    index: MediaIndex, plan: SegmentPlan, segment: int, source: SampleSource
) -> SegmentBody:
    video = _tracks(index, plan)[0]
    units = _segment_units(index, plan, segment)
    order = units.order
    is_video = order < units.videos
    carries_pcr = is_video | (units.videos == 0)
    pcrs = [
        int(dts) - _PCR_DELAY if pcr else None
        for dts, pcr in zip(units.dts[order].tolist(), carries_pcr.tolist(), strict=True)
    ]
    # Keyframes are random access points; so is every PES of an audio-only stream.
    random_access = carries_pcr & ~is_video
    if video is not None:
        random_access[is_video] = video.sync[units.first[order][is_video]]
    counters = dict(zip((_VIDEO_PID, _AUDIO_PID), _continuity(index, plan, segment), strict=True))
    # Packet counts come from the real PES: they differ from the model only with 1- or 2-byte
    # NAL length fields, where the size model cannot know the number of NAL units.
    body = _transport_packets(
        _pes_in_order(index, plan, units, source),
        np.where(is_video, _VIDEO_PID, _AUDIO_PID).astype(np.int64),
        pcrs,
        random_access,
        counters,
    )
    psi = _psi(index, plan, segment)
    return SegmentBody([psi, body.reshape(-1).data], len(psi) + body.size)


def iframe_ranges(index: MediaIndex, plan: SegmentPlan, segment: int) -> list[tuple[int, int, int]]:
    """(fragment, byte offset in the segment, length) of each fragment's keyframe PES: whole TS
    packets, for an I-frame playlist whose EXT-X-MAP is the PAT and PMT (``PSI_SIZE``@0)."""
    units = _segment_units(index, plan, segment)
    if units.videos == 0 or plan.video is None:
        return []
    ordered = units.packets[units.order]
    starts = PSI_SIZE + PACKET_SIZE * (np.cumsum(ordered) - ordered)
    rank = np.empty_like(units.order)
    rank[units.order] = np.arange(units.order.shape[0])
    first_sample = int(units.first[0])
    out = []
    for fragment in plan.fragments(segment):
        unit = int(plan.video[fragment]) - first_sample
        out.append((fragment, int(starts[rank[unit]]), PACKET_SIZE * int(units.packets[unit])))
    return out
