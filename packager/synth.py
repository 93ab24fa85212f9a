"""Synthetic media: encode generated frames and tones with PyAV into an MP4.

Used by the demo command, the test fixtures and the benchmarks, so all three exercise files that
look like real encoder output (x264/x265 with B-frames, AAC with priming, moov at either end).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import av
import numpy as np


@dataclass(frozen=True)
class SynthSpec:
    duration: float = 10.0
    width: int = 320
    height: int = 180
    fps: Fraction = Fraction(30)
    video: Literal["h264", "hevc"] | None = "h264"
    # Keyframe every this many seconds; ignored when ``keyframes`` is given.
    gop_seconds: float = 2.0
    # Explicit keyframe times in seconds (an irregular GOP); frame 0 is always a keyframe.
    keyframes: tuple[float, ...] | None = None
    bframes: int = 2
    # Target bitrate in bit/s; None lets the encoder pick by quality (much faster, small files).
    bitrate: int | None = None
    # Amount of random detail per frame (0-64); real bitrates need real entropy.
    noise: int = 0
    audio_rate: int | None = 48000
    audio_channels: int = 2
    faststart: bool = False
    preset: str = "superfast"
    extra: dict[str, str] = field(default_factory=dict)


def _keyframe_frames(spec: SynthSpec, frames: int) -> set[int]:
    if spec.keyframes is None:
        return set()
    return {0} | {round(t * spec.fps) for t in spec.keyframes if round(t * spec.fps) < frames}


def _video_options(spec: SynthSpec) -> dict[str, str]:
    keyint = max(1, round(spec.gop_seconds * spec.fps))
    if spec.keyframes is not None:
        keyint = 100_000  # only the forced keyframes
    if spec.video == "hevc":
        params = f"keyint={keyint}:min-keyint={keyint}:scenecut=0:bframes={spec.bframes}"
        params += ":open-gop=0:log-level=error"
        options = {"preset": spec.preset, "x265-params": params}
    else:
        params = f"keyint={keyint}:min-keyint={keyint}:scenecut=0:bframes={spec.bframes}"
        params += ":open-gop=0"
        options = {"preset": spec.preset, "x264-params": params, "forced-idr": "1"}
    if spec.keyframes is not None:
        options["forced-idr"] = "1"
    if spec.bitrate:
        options.update(b=str(spec.bitrate), maxrate=str(spec.bitrate), bufsize=str(spec.bitrate))
    options.update(spec.extra)
    return options


def _frame(spec: SynthSpec, index: int, rng: np.random.Generator) -> av.VideoFrame:
    w, h = spec.width, spec.height
    x = np.arange(w, dtype=np.int32)
    y = np.arange(h, dtype=np.int32)[:, None]
    luma = ((x + index * 4) % 256 + (y // 8) * 3) % 220 + 16
    box = (index * 5) % max(1, w - w // 6)
    luma = np.broadcast_to(luma, (h, w)).astype(np.uint8)
    luma[h // 3 : h // 3 + h // 6, box : box + w // 6] = 235
    if spec.noise:
        luma = np.clip(luma + rng.integers(-spec.noise, spec.noise, (h, w)), 16, 235).astype(
            np.uint8
        )
    chroma_u = np.full((h // 2, w // 2), 128 + (index % 64), dtype=np.uint8)
    chroma_v = np.full((h // 2, w // 2), 128 - (index % 64), dtype=np.uint8)
    planar = np.concatenate([luma, chroma_u.reshape(h // 4, w), chroma_v.reshape(h // 4, w)])
    return av.VideoFrame.from_ndarray(planar, format="yuv420p")


def write(path: str | Path, spec: SynthSpec) -> Path:
    """Encode ``spec`` into ``path`` (an .mp4) and return the path."""
    out_path = Path(path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    options = {"movflags": "+faststart"} if spec.faststart else {}
    rng = np.random.default_rng(7)
    with av.open(str(out_path), "w", format="mp4", options=options) as out:
        vstream: Any = None
        astream: Any = None
        if spec.video:
            codec = "libx265" if spec.video == "hevc" else "libx264"
            vstream = out.add_stream(codec, rate=spec.fps, options=_video_options(spec))
            vstream.width, vstream.height, vstream.pix_fmt = spec.width, spec.height, "yuv420p"
            vstream.codec_context.time_base = Fraction(1) / spec.fps
            if spec.video == "hevc":
                vstream.codec_tag = "hvc1"
        if spec.audio_rate:
            astream = out.add_stream("aac", rate=spec.audio_rate)
            astream.layout = "stereo" if spec.audio_channels == 2 else "mono"
            astream.bit_rate = 128_000
        frames = math.floor(spec.duration * spec.fps + 1e-9)
        forced = _keyframe_frames(spec, frames)
        audio_samples = round(spec.duration * spec.audio_rate) if spec.audio_rate else 0
        audio_done = 0
        for index in range(frames if vstream else 0):
            frame = _frame(spec, index, rng)
            frame.pts = index
            frame.time_base = Fraction(1) / spec.fps
            if index in forced:
                frame.pict_type = av.video.frame.PictureType.I
            out.mux(vstream.encode(frame))
            # Interleave audio with video as a real muxer input would arrive.
            audio_done = _encode_audio(
                out, astream, spec, audio_done, float((index + 1) / spec.fps)
            )
        if vstream:
            out.mux(vstream.encode(None))
        _encode_audio(out, astream, spec, audio_done, spec.duration, total=audio_samples)
        if astream:
            out.mux(astream.encode(None))
    return out_path


def _encode_audio(
    out: Any, astream: Any, spec: SynthSpec, done: int, until: float, total: int | None = None
) -> int:
    if astream is None or spec.audio_rate is None:
        return done
    rate = spec.audio_rate
    goal = total if total is not None else min(round(until * rate), round(spec.duration * rate))
    while done < goal:
        count = min(1024, goal - done)
        t = (np.arange(done, done + count) / rate).astype(np.float32)
        tone = 0.2 * np.sin(2 * np.pi * (440 + 220 * np.floor(t)) * t)
        layout = "stereo" if spec.audio_channels == 2 else "mono"
        samples = np.tile(tone, (spec.audio_channels, 1)).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout=layout)
        frame.sample_rate = rate
        frame.pts = done
        frame.time_base = Fraction(1, rate)
        out.mux(astream.encode(frame))
        done += count
    return done
