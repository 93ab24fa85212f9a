"""Codec configuration records: esds/AudioSpecificConfig parsing and RFC 6381 CODECS strings."""

from __future__ import annotations

from typing import NamedTuple

from backends.errors import BadMedia, UnsupportedMedia

AAC_RATES = (
    96000,
    88200,
    64000,
    48000,
    44100,
    32000,
    24000,
    22050,
    16000,
    12000,
    11025,
    8000,
    7350,
)
# MPEG-4 audio (0x40) and the MPEG-2 AAC profiles (Main, LC, SSR).
_AAC_OBJECT_TYPES = frozenset({0x40, 0x66, 0x67, 0x68})


class AudioConfig(NamedTuple):
    object_type: int  # 2 = AAC-LC, 5 = HE-AAC (SBR), 29 = HE-AACv2 (PS)
    sample_rate: int
    channels: int
    frequency_index: int


class _Bits:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def read(self, count: int) -> int:
        value = 0
        for _ in range(count):
            byte = self.pos >> 3
            if byte >= len(self.data):
                raise BadMedia("AudioSpecificConfig is cut off")
            value = (value << 1) | ((self.data[byte] >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return value


def parse_audio_specific_config(config: bytes) -> AudioConfig:
    bits = _Bits(config)
    object_type = bits.read(5)
    if object_type == 31:
        object_type = 32 + bits.read(6)
    index = bits.read(4)
    rate = bits.read(24) if index == 15 else (AAC_RATES[index] if index < len(AAC_RATES) else 0)
    channels = bits.read(4)
    if rate == 0:
        raise BadMedia(f"AudioSpecificConfig has an invalid sampling frequency index {index}")
    return AudioConfig(object_type, rate, channels, index)


def _descriptor(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, payload start, payload end) of the MPEG-4 descriptor at ``pos``."""
    if pos + 2 > len(data):
        raise BadMedia("esds descriptor is cut off")
    tag = data[pos]
    pos += 1
    length = 0
    for _ in range(4):
        if pos >= len(data):
            raise BadMedia("esds descriptor length is cut off")
        byte = data[pos]
        pos += 1
        length = (length << 7) | (byte & 0x7F)
        if not byte & 0x80:
            break
    if pos + length > len(data):
        raise BadMedia("esds descriptor overruns its box")
    return tag, pos, pos + length


def parse_esds(payload: bytes) -> bytes:
    """Return the AudioSpecificConfig inside an esds box payload (version/flags included)."""
    tag, start, end = _descriptor(payload, 4)
    if tag != 0x03:
        raise BadMedia("esds does not start with an ES descriptor")
    flags = payload[start + 2] if start + 2 < end else 0
    pos = start + 3
    if flags & 0x80:
        pos += 2
    if flags & 0x40:
        pos += 1 + (payload[pos] if pos < end else 0)
    if flags & 0x20:
        pos += 2
    tag, start, end = _descriptor(payload, pos)
    if tag != 0x04 or start + 13 > end:
        raise BadMedia("esds has no decoder configuration")
    object_type = payload[start]
    if object_type not in _AAC_OBJECT_TYPES:
        raise UnsupportedMedia(f"audio object type 0x{object_type:02x} is not AAC")
    tag, info_start, info_end = _descriptor(payload, start + 13)
    if tag != 0x05 or info_end - info_start < 2:
        raise BadMedia("esds has no AudioSpecificConfig")
    return payload[info_start:info_end]


def avc_codec(fourcc: str, avcc: bytes) -> str:
    if len(avcc) < 4:
        raise BadMedia("avcC box is too short")
    return f"{fourcc}.{avcc[1]:02x}{avcc[2]:02x}{avcc[3]:02x}"


def hevc_codec(fourcc: str, hvcc: bytes) -> str:
    """ISO/IEC 14496-15 Annex E: hvc1.<space><profile>.<compat>.<tier><level>.<constraints>."""
    if len(hvcc) < 13:
        raise BadMedia("hvcC box is too short")
    space = ("", "A", "B", "C")[hvcc[1] >> 6]
    tier = "H" if hvcc[1] & 0x20 else "L"
    profile = hvcc[1] & 0x1F
    compat = int.from_bytes(hvcc[2:6], "big")
    reversed_compat = int(f"{compat:032b}"[::-1], 2)
    constraints = list(hvcc[6:12])
    while constraints and constraints[-1] == 0:
        constraints.pop()
    parts = [fourcc, f"{space}{profile}", f"{reversed_compat:X}", f"{tier}{hvcc[12]}"]
    parts += [f"{b:X}" for b in constraints]
    return ".".join(parts)


def aac_codec(config: bytes) -> str:
    return f"mp4a.40.{parse_audio_specific_config(config).object_type}"


def codec_string(fourcc: str, config: bytes) -> str:
    if fourcc in ("avc1", "avc3"):
        return avc_codec(fourcc, config)
    if fourcc in ("hvc1", "hev1"):
        return hevc_codec(fourcc, config)
    if fourcc == "mp4a":
        return aac_codec(config)
    raise UnsupportedMedia(f"no CODECS string for {fourcc!r}")
