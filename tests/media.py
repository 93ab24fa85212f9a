"""The catalogue of generated test media: every case the packager must handle, small and fast.

Files are encoded by PyAV (``packager.synth``) on first use in a run and shared by all tests.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from packager.synth import SynthSpec, write

NTSC = Fraction(30000, 1001)

# name -> spec. Small frames (320x180 or less) keep a full run short on two cores.
GOOD: dict[str, SynthSpec] = {
    "h264_30fps_bframes": SynthSpec(duration=14, fps=Fraction(30), bframes=2),
    "h264_25fps_nobframes_front_44k": SynthSpec(
        duration=13, fps=Fraction(25), bframes=0, faststart=True, audio_rate=44100
    ),
    "h264_2997fps": SynthSpec(duration=13, fps=NTSC, bframes=2),
    "h264_60fps_front": SynthSpec(duration=8, fps=Fraction(60), bframes=3, faststart=True),
    "h264_irregular_gop": SynthSpec(
        duration=16, keyframes=(1.3, 2.0, 5.5, 7.1, 9.9, 13.2), bframes=2, audio_rate=44100
    ),
    "hevc": SynthSpec(duration=8, video="hevc", bframes=2),
    "audio_only": SynthSpec(duration=13, video=None),
    "video_only": SynthSpec(duration=9, audio_rate=None, bframes=2),
}

LONG = SynthSpec(
    duration=600, width=128, height=72, fps=Fraction(25), bframes=2, preset="ultrafast"
)

# A ladder whose renditions share 2 s GOPs, and one whose 240p rendition does not.
LADDER: dict[str, SynthSpec] = {
    "360p": SynthSpec(duration=10, width=640, height=360),
    "240p": SynthSpec(duration=10, width=426, height=240),
    "180p": SynthSpec(duration=10, width=320, height=180),
}
MISALIGNED: dict[str, SynthSpec] = {
    "360p": SynthSpec(duration=10, width=640, height=360),
    "240p": SynthSpec(duration=10, width=426, height=240, gop_seconds=2.5),
}


def _patch_box_field(data: bytes, box: bytes, offset: int, value: int) -> bytes:
    """Overwrite a 32-bit field ``offset`` bytes after the 4CC of the first ``box``."""
    at = data.index(box, data.index(b"moov")) + 4 + offset
    return data[:at] + struct.pack(">I", value) + data[at + 4 :]


def _corrupt(kind: str, source: bytes) -> bytes:
    moov_at = source.index(b"moov") - 4
    if kind == "random_bytes":
        return np.random.default_rng(1).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    if kind == "text_file":
        return b"this is not a video, just text that happens to be named .mp4\n" * 100
    if kind == "empty":
        return b""
    if kind == "truncated_no_moov":  # moov at the end, upload cut in the middle of mdat
        return source[: moov_at // 2]
    if kind == "truncated_tail":  # moov at the front, the end of the media data is missing
        return source[: len(source) * 2 // 3]
    if kind == "stsz_count_mismatch":  # stsz says more samples than stts covers
        return _patch_box_field(source, b"stsz", 8, 10_000)
    if kind == "offsets_past_end":  # the chunk offsets point past the end of the file
        return _patch_box_field(source, b"stco", 8, len(source) + 1_000_000)
    if kind == "stts_overflow":  # a hostile count that would expand to billions of samples
        return _patch_box_field(source, b"stts", 8, 0xFFFFFFF0)
    if kind == "moov_box_overrun":  # moov claims to be larger than the file
        return source[:moov_at] + struct.pack(">I", 0x7FFFFFF0) + source[moov_at + 4 :]
    raise ValueError(kind)


CORRUPT = (
    "random_bytes",
    "text_file",
    "empty",
    "truncated_no_moov",
    "truncated_tail",
    "stsz_count_mismatch",
    "offsets_past_end",
    "stts_overflow",
    "moov_box_overrun",
)


def write_mpeg4_part2(path: Path) -> Path:
    """A well-formed MP4 whose only video codec (MPEG-4 Part 2, 'mp4v') we do not package."""
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 160, 96, "yuv420p"
        for i in range(25):
            frame = av.VideoFrame.from_ndarray(
                np.full((96, 160, 3), i * 8, dtype=np.uint8), format="rgb24"
            )
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


class MediaLibrary:
    """Lazily generated library folder: tests ask for names, files appear once per run."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _once(self, relative: str, make: Callable[[Path], object]) -> Path:
        path = self.root / relative
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name("." + path.name + ".partial")
            make(partial)
            partial.replace(path)
        return path

    def good(self, name: str) -> Path:
        return self._once(f"{name}.mp4", lambda p: write(p, GOOD[name]))

    def long(self) -> Path:
        return self._once("long_10min.mp4", lambda p: write(p, LONG))

    def ladder(self, name: str = "ladder", specs: dict[str, SynthSpec] = LADDER) -> Path:
        for rendition, spec in specs.items():
            self._once(f"{name}/{rendition}.mp4", lambda p, s=spec: write(p, s))  # type: ignore[misc]
        return self.root / name

    def misaligned(self) -> Path:
        return self.ladder("misaligned", MISALIGNED)

    def corrupt(self, kind: str) -> Path:
        faststart = kind in ("truncated_tail", "offsets_past_end")
        base = self.good("h264_25fps_nobframes_front_44k" if faststart else "h264_30fps_bframes")
        return self._once(
            f"bad/{kind}.mp4", lambda p: p.write_bytes(_corrupt(kind, base.read_bytes()))
        )

    def unsupported_codec(self) -> Path:
        return self._once("bad/mpeg4_part2.mp4", write_mpeg4_part2)
