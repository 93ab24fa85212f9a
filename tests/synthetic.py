"""MediaIndex objects built directly from numbers, for table and property tests."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from packager.index import MediaIndex, Track, TrackInfo


def video_track(
    frames: int,
    fps: float = 30.0,
    keyframes: Sequence[int] | None = None,
    gop: int = 60,
    timescale: int = 90000,
    bframes: bool = False,
) -> Track:
    delta = round(timescale / fps)
    dts = np.arange(frames, dtype=np.int64) * delta
    cto = np.zeros(frames, dtype=np.int32)
    if bframes:  # decode-order shift of two frames, as x264 writes it with an edit list
        cto[:] = 2 * delta
        dts -= 2 * delta
    sync = np.zeros(frames, dtype=np.bool_)
    sync[list(keyframes) if keyframes is not None else list(range(0, frames, gop))] = True
    size = np.full(frames, 1000, dtype=np.uint32)
    info = TrackInfo(
        track_id=1,
        kind="video",
        codec="avc1",
        timescale=timescale,
        sample_entry=b"",
        codec_config=b"\x01\x64\x00\x1f",
        end_dts=int(dts[-1]) + delta,
        presentation_start=0,
        presentation_end=frames * delta,
        width=320,
        height=180,
    )
    offset = np.arange(frames, dtype=np.int64) * 1000
    return Track(info, dts, cto, size, offset, sync)


def audio_track(seconds: float, rate: int = 48000, priming: int = 1024) -> Track:
    frames = int(np.ceil((seconds * rate + priming) / 1024))
    dts = np.arange(frames, dtype=np.int64) * 1024 - priming
    info = TrackInfo(
        track_id=2,
        kind="audio",
        codec="mp4a",
        timescale=rate,
        sample_entry=b"",
        codec_config=b"\x11\x90",
        end_dts=int(dts[-1]) + 1024,
        presentation_start=0,
        presentation_end=round(seconds * rate),
        sample_rate=rate,
        channels=2,
    )
    size = np.full(frames, 300, dtype=np.uint32)
    offset = 10**9 + np.arange(frames, dtype=np.int64) * 300
    return Track(info, dts, np.zeros(frames, np.int32), size, offset, np.ones(frames, np.bool_))


def index_of(*tracks: Track) -> MediaIndex:
    return MediaIndex(file_size=2 * 10**9, major_brand="isom", tracks=tuple(tracks))
