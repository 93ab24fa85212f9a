"""What an uploaded file is, by its content (never its name), and whether we take it.

``probe`` opens the file with PyAV (FFmpeg's demuxers recognise the container from its bytes)
and decodes the first video frame, so a file whose video cannot be decoded is refused here
rather than in the middle of a transcode. ``check`` holds the rules, a pure function of the
facts. ``plays_as_is`` says whether the original can be packaged just in time while the ladder
is encoded (H.264 with AAC or no audio, in MP4/MOV).
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import av
import msgspec

from backends.errors import BadMedia

# PyAV format names of the containers we take (MP4, MOV, MKV, AVI), as FFmpeg reports them.
CONTAINERS = {"mov,mp4,m4a,3gp,3g2,mj2": "mp4", "matroska,webm": "mkv", "avi": "avi"}
MAX_SECONDS = 2 * 3600
MAX_WIDTH, MAX_HEIGHT = 7680, 4320  # 8K UHD


class MediaFacts(msgspec.Struct, frozen=True, kw_only=True):
    container: str  # mp4 (also MOV), mkv, avi
    duration: float  # seconds
    width: int
    height: int
    video_codec: str
    audio_codec: str | None
    audio_channels: int
    rotation: int  # degrees the picture must be turned to display upright
    frame_rate: float | None


def probe(path: str) -> MediaFacts:
    """The facts of the file at ``path``; BadMedia saying why it is not a video we can read."""
    try:
        with av.open(path) as container:
            return _facts(container)
    except av.FFmpegError as exc:
        raise BadMedia(f"not a readable video file ({type(exc).__name__})") from None


def _facts(container: Any) -> MediaFacts:
    kind = CONTAINERS.get(container.format.name)
    if kind is None:
        raise BadMedia(
            f"{container.format.long_name or container.format.name} files are not accepted: "
            "upload MP4, MOV, MKV or AVI"
        )
    if not container.streams.video:
        raise BadMedia("the file has no video stream")
    video = container.streams.video[0]
    audio = container.streams.audio[0] if container.streams.audio else None
    try:
        frame = next(container.decode(video=0), None)
    except (av.FFmpegError, ValueError):
        frame = None
    if frame is None:
        raise BadMedia(f"its {video.codec_context.name} video cannot be decoded")
    duration = _seconds(container, video)
    rate = video.average_rate
    return MediaFacts(
        container=kind,
        duration=duration,
        width=int(video.codec_context.width),
        height=int(video.codec_context.height),
        video_codec=str(video.codec_context.name),
        audio_codec=str(audio.codec_context.name) if audio is not None else None,
        audio_channels=int(audio.codec_context.layout.nb_channels) if audio is not None else 0,
        rotation=_rotation(frame),
        frame_rate=float(rate) if isinstance(rate, Fraction) and rate > 0 else None,
    )


def _seconds(container: Any, video: Any) -> float:
    if container.duration is not None and container.duration > 0:
        return float(container.duration) / av.time_base
    if video.duration is not None and video.time_base is not None:
        return float(video.duration * video.time_base)
    return 0.0


def _rotation(frame: Any) -> int:
    # PyAV 14+ reports the display matrix's rotation on decoded frames.
    rotation = getattr(frame, "rotation", 0) or 0
    return round(float(rotation)) % 360


def check(
    facts: MediaFacts,
    max_seconds: float = MAX_SECONDS,
    max_width: int = MAX_WIDTH,
    max_height: int = MAX_HEIGHT,
) -> None:
    """BadMedia saying which rule ``facts`` break (duration, dimensions); nothing otherwise."""
    if facts.duration <= 0:
        raise BadMedia("the video has no duration")
    if facts.duration > max_seconds:
        raise BadMedia(
            f"the video lasts {facts.duration / 60:.0f} minutes: at most {max_seconds / 60:.0f}"
        )
    # Either orientation: a portrait 4320x7680 is as large as a landscape 8K picture.
    long_side, short_side = max(facts.width, facts.height), min(facts.width, facts.height)
    if long_side > max(max_width, max_height) or short_side > min(max_width, max_height):
        raise BadMedia(
            f"the video is {facts.width}x{facts.height}: at most {max_width}x{max_height}"
        )
    if facts.width <= 0 or facts.height <= 0:
        raise BadMedia("the video has no picture size")


def plays_as_is(facts: MediaFacts) -> bool:
    """The original can be packaged just in time: H.264 with AAC (or no audio) in MP4/MOV."""
    return (
        facts.container == "mp4"
        and facts.video_codec == "h264"
        and facts.audio_codec in (None, "aac")
    )
