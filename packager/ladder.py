"""The transcode ladder: one upload decoded once, encoded into aligned H.264/AAC MP4 renditions.

``ladder_plan.plan`` (pure) picks the rungs and their sizes; ``transcode`` decodes the source
once and feeds every rung's encoder from that one decode, writing ``{out_dir}/{rung}.mp4``:

* **Sizes.** A rung's height is the *short side* of the picture as displayed: a landscape 16:9
  source gets 1920x1080 for "1080p", a portrait phone video gets 1080x1920. Players and sites
  name portrait video this way (a 1080x1920 clip is "1080p"), and a rung's bitrate buys the same
  number of pixels in either orientation; matching the long side instead would starve portrait
  rungs (a "1080p" portrait rung would be 608x1080). Rungs above the source's short side are
  skipped (no upscaling); a source below every rung gets one rung at its own size, named after
  it ("240p"). Dimensions are even (4:2:0 chroma) and keep the display aspect ratio (non-square
  pixels are resampled to square ones).
* **Rotation.** A display matrix is applied to the pixels (ffmpeg's autorotate): rungs are
  upright and carry no matrix, because not every player honours one.
* **Frames.** Output is constant-rate: the source's average rate, snapped to a standard rate
  when within 1% of one (else whole frames per second), capped at ``max_fps``, 30 when unknown.
  Each output slot shows the latest source frame due by then (rounded to the nearest slot), so
  variable-rate sources get frames dropped or repeated by timestamp.
* **Keyframes.** Every ``gop_seconds`` worth of output frames is a forced IDR, the same output
  frames in every rung, and x264 may add none of its own (scenecut=0, closed GOPs): the rungs
  cut segments at the same instants and package as one ladder.
* **Audio.** The first audio stream is resampled to stereo (5.1 is downmixed) 48 kHz, placed on
  the video's timeline (audio before the first video frame is cut, late starts and holes become
  silence) and trimmed or padded to the video's length; it is encoded once, AAC-LC, and the same
  packets are muxed into every rung. A source without audio gives rungs without audio.
* **Failure.** A source that cannot be read or decoded, or that ends well before its declared
  duration (a cut upload), raises ``BadMedia`` with the time it reached; no output file is left
  behind (rungs are written under temporary names and renamed when all are complete).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any, ClassVar

import av
import numpy as np
from av.video.reformatter import ColorRange, Interpolation, VideoReformatter

from backends.errors import BadMedia
from packager.ladder_plan import (
    DEFAULT_RUNGS,
    FrameClock,
    LadderConfig,
    PlannedRung,
    Rung,
    RungOutput,
    SampleQueue,
    avc_codecs,
    output_rate,
    plan,
)

__all__ = ["DEFAULT_RUNGS", "Cancelled", "LadderConfig", "Rung", "RungOutput", "plan", "transcode"]


class Cancelled(Exception):
    """``stop`` was set: the transcode ended early and left nothing behind."""


# --- the transcode (PyAV stays below this line) ----------------------------------------------

PICTURE_I = av.video.frame.PictureType.I
PICTURE_AUTO = av.video.frame.PictureType.NONE
AUDIO_FRAME = 1024  # AAC-LC samples per frame
TRUNCATED_SECONDS = 1.0  # the decoded video may end this much (+2%) before its declared end
PROGRESS_STEPS = 100
DEFAULT_CONFIG = LadderConfig()  # frozen: one shared default is safe
EARLY_AUDIO_SECONDS = 10.0  # of sound decoded before the first picture, at most


def transcode(
    source: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    config: LadderConfig = DEFAULT_CONFIG,
    on_progress: Callable[[float], None] | None = None,
    stop: threading.Event | None = None,
) -> list[RungOutput]:
    """Encode ``source`` into ``{out_dir}/{rung}.mp4`` for every planned rung (blocking).

    ``stop`` set from another thread ends it at the next frame (Cancelled), outputs removed.
    ``on_progress`` gets the fraction done (0..1) at most about a hundred times; an exception
    it raises ends the transcode (and propagates). BadMedia when the source cannot be decoded.
    """
    job = _Job(Path(source), Path(out_dir), config, on_progress, stop)
    try:
        return job.run()
    finally:
        job.close()


class _Source:
    """The input container: demuxed and decoded once; FFmpeg's errors become BadMedia here."""

    def __init__(self, path: Path) -> None:
        try:
            self.container: Any = av.open(str(path))
        except av.FFmpegError as exc:
            raise BadMedia(f"not a readable video file ({type(exc).__name__})") from None
        if not self.container.streams.video:
            self.container.close()
            raise BadMedia("the file has no video stream")
        self.video: Any = self.container.streams.video[0]
        audio = self.container.streams.audio
        self.audio: Any = audio[0] if audio else None
        # Frame threads, as the ffmpeg CLI uses them: PyAV's default (slice threads only)
        # made the 1080p ladder ~15% slower.
        self.video.codec_context.thread_type = "AUTO"
        self.reached = 0.0  # seconds of video decoded, for error messages

    @property
    def declared(self) -> float | None:
        """The video's duration according to the container, if it says."""
        video = self.video
        if video.duration and video.time_base:
            return float(video.duration * video.time_base)
        if self.container.duration and self.container.duration > 0:
            return float(self.container.duration / av.time_base)
        return None

    def frames(self) -> Iterator[Any]:
        streams = [s for s in (self.video, self.audio) if s is not None]
        packets = self.container.demux(*streams)
        while True:
            try:
                packet = next(packets, None)
            except av.FFmpegError as exc:
                raise self._failure("the file cannot be read", exc) from None
            if packet is None:
                return
            try:
                frames = packet.decode()
            except av.FFmpegError as exc:
                kind = "audio" if packet.stream is self.audio else "video"
                raise self._failure(f"the {kind} cannot be decoded", exc) from None
            yield from frames

    def _failure(self, what: str, exc: Exception) -> BadMedia:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        return BadMedia(f"{what} after {self.reached:.1f} s: {reason}")

    def close(self) -> None:
        self.container.close()


class _Rotator:
    """Turns decoded pictures upright with libavfilter (rotation: degrees counterclockwise,
    as FFmpeg reports a display matrix)."""

    FILTERS: ClassVar[dict[int, tuple[tuple[str, str], ...]]] = {
        90: (("transpose", "dir=cclock"),),
        180: (("hflip", ""), ("vflip", "")),
        270: (("transpose", "dir=clock"),),
    }

    def __init__(self, rotation: int) -> None:
        self.chain = self.FILTERS[rotation]
        self.graph: Any = None
        self.shape: tuple[int, int, str] | None = None

    def __call__(self, frame: Any) -> Any:
        shape = (frame.width, frame.height, frame.format.name)
        if shape != self.shape:  # built for the first picture, again if the size changes
            self.graph, self.shape = av.filter.Graph(), shape
            node = self.graph.add_buffer(
                width=frame.width,
                height=frame.height,
                format=frame.format,
                time_base=frame.time_base,
            )
            for name, args in self.chain:
                step = self.graph.add(name, args)
                node.link_to(step)
                node = step
            node.link_to(self.graph.add("buffersink"))
            self.graph.configure()
        self.graph.push(frame)
        return self.graph.pull()


class _Output:
    """One rung: its MP4 (under a temporary name until the ladder is complete) and encoder."""

    def __init__(
        self, folder: Path, rung: PlannedRung, rate: Fraction, config: LadderConfig
    ) -> None:
        self.rung = rung
        self.path = folder / f"{rung.name}.mp4"
        self.partial = folder / f".{rung.name}.partial.mp4"
        self.container: Any = av.open(
            str(self.partial), "w", format="mp4", options={"movflags": "+faststart"}
        )
        keyint = max(1, round(config.gop_seconds * rate))
        bitrate = rung.video_bitrate
        options = {
            "preset": config.preset,
            "profile": "high",
            "x264-params": f"keyint={keyint}:min-keyint={keyint}:scenecut=0:open-gop=0",
            "forced-idr": "1",
            "b": str(bitrate),
            "maxrate": str(bitrate),
            "bufsize": str(2 * bitrate),
        }
        self.video: Any = self.container.add_stream("libx264", rate=rate, options=options)
        self.video.width, self.video.height, self.video.pix_fmt = rung.width, rung.height, "yuv420p"
        self.video.codec_context.time_base = 1 / rate
        # x264's frame threads, as the ffmpeg CLI asks for them: PyAV's default (sliced
        # threads) made the 1080p ladder ~25% slower.
        self.video.codec_context.thread_type = "AUTO"
        self.scaler = VideoReformatter()
        self.audio: Any = None

    def encode(self, picture: Any) -> None:
        self.container.mux(self.video.encode(picture))

    def close(self) -> None:
        self.container.close()


class _Audio:
    """The first audio stream: resampled, placed on the video's timeline, encoded once (in the
    first rung's AAC stream) and its packets muxed into every rung."""

    def __init__(self, config: LadderConfig, outputs: list[_Output], start: Fraction) -> None:
        self.rate = config.audio_rate
        self.outputs = outputs
        self.start = start  # the video's first frame: sample 0 of the output
        first = outputs[0]
        self.encoder: Any = first.container.add_stream("aac", rate=self.rate)
        self.encoder.layout = "stereo"
        self.encoder.bit_rate = config.audio_bitrate
        first.audio = self.encoder
        # The encoder opens with the first rung's header; its parameters (AudioSpecificConfig,
        # priming) are then copied into the other rungs' streams, which take the same packets.
        first.container.start_encoding()
        for output in outputs[1:]:
            output.audio = output.container.add_stream_from_template(self.encoder)
        self.queue = SampleQueue(2, AUDIO_FRAME, tolerance=self.rate // 50)
        self.resampler: Any = None
        self.shape: tuple[str, str, int] | None = None

    def push(self, frame: Any, video_end: Fraction) -> None:
        """Take a decoded frame; encode what the video (encoded up to ``video_end``) covers."""
        shape = (frame.format.name, frame.layout.name, frame.sample_rate)
        if shape != self.shape:  # the first frame, or a mid-stream change of format
            self._resampled(None)
            self.resampler, self.shape = (
                av.AudioResampler(format="fltp", layout="stereo", rate=self.rate),
                shape,
            )
        self._resampled(frame)
        self._encode(self.queue.take(round(video_end * self.rate)))

    def _resampled(self, frame: Any) -> None:
        if self.resampler is None:
            return
        for out in self.resampler.resample(frame):
            at = None
            if out.pts is not None and out.time_base is not None:
                at = round((out.pts * out.time_base - self.start) * self.rate)
            self.queue.put(out.to_ndarray(), at)

    def finish(self, video_end: Fraction) -> None:
        self._resampled(None)
        self._encode(self.queue.finish(round(video_end * self.rate)))
        self._mux(self.encoder.encode(None))

    def _encode(self, chunks: Iterator[np.ndarray]) -> None:
        for chunk in chunks:
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(chunk, dtype=np.float32), format="fltp", layout="stereo"
            )
            frame.sample_rate = self.rate
            frame.time_base = Fraction(1, self.rate)
            frame.pts = self.queue.taken - chunk.shape[1]
            self._mux(self.encoder.encode(frame))

    def _mux(self, packets: list[Any]) -> None:
        for packet in packets:
            for output in self.outputs:
                packet.stream = output.audio
                output.container.mux_one(packet)


class _Job:
    """One transcode: the source, the rungs once the first picture is decoded, the frame loop."""

    def __init__(
        self,
        source: Path,
        folder: Path,
        config: LadderConfig,
        on_progress: Callable[[float], None] | None,
        stop: threading.Event | None = None,
    ) -> None:
        self.config = config
        self.folder = folder
        self.on_progress = on_progress
        self.stop = stop
        self.outputs: list[_Output] = []
        self.audio: _Audio | None = None
        self.early_audio: list[Any] = []  # decoded before the first picture
        self.done = False
        self.progress_step = 0
        self.source = _Source(source)

    def _start(self, first: Any, start: Fraction) -> None:
        """What depends on the first decoded picture: rotation, sizes, rate, the outputs."""
        video = self.source.video
        # PyAV reports the display matrix's angle counterclockwise; players apply quarter turns.
        rotation = 90 * round(float(first.rotation or 0) / 90) % 360
        self.rotate = _Rotator(rotation) if rotation else None
        sar = video.codec_context.sample_aspect_ratio or None
        planned = plan(first.width, first.height, rotation, self.config.rungs, sar)
        self.rate = output_rate(video.average_rate or video.guessed_rate, self.config.max_fps)
        self.keyint = max(1, round(self.config.gop_seconds * self.rate))
        self.clock = FrameClock(self.rate)
        declared = self.source.declared
        self.expected_slots = max(1, round((declared or 0) * self.rate))
        # A timestamp this far past the declared end is corrupt, not a long still picture.
        self.max_slot = None if declared is None else round((declared + 10) * self.rate)
        self.folder.mkdir(parents=True, exist_ok=True)
        for rung in planned:
            self.outputs.append(_Output(self.folder, rung, self.rate, self.config))
        if self.source.audio is not None:
            self.audio = _Audio(self.config, self.outputs, start)
            for frame in self.early_audio:
                self.audio.push(frame, Fraction(0))
            self.early_audio = []

    def run(self) -> list[RungOutput]:
        pending: Any = None  # the latest picture, shown until the clock says how long
        last, last_duration = Fraction(0), Fraction(0)
        early = 0.0  # seconds of sound before the first picture
        for frame in self.source.frames():
            if isinstance(frame, av.AudioFrame):
                if self.audio is not None:
                    self.audio.push(frame, Fraction(self.clock.next, self.rate))
                    continue
                self.early_audio.append(frame)
                early += frame.samples / (frame.sample_rate or 1)
                if early > EARLY_AUDIO_SECONDS:  # files interleave by time: no picture will come
                    break
                continue
            if frame.pts is not None and frame.time_base is not None:
                t = Fraction(frame.pts * frame.time_base)
            else:  # no timestamp: right after the previous picture
                t = last + (last_duration or 1 / self.rate)
            if pending is None:
                self._start(frame, t)
            self._emit(pending, self.clock.push(t))
            pending, last = frame, t
            last_duration = Fraction(frame.duration * frame.time_base if frame.duration else 0)
            self.source.reached = float(t - (self.clock.start or 0))
        if pending is None:
            raise BadMedia(f"its {self.source.video.codec_context.name} video cannot be decoded")
        end = last + (last_duration or 1 / self.rate)
        self._check_length(end)
        self._emit(pending, self.clock.finish(end))
        return self._finish()

    def _emit(self, frame: Any, count: int) -> None:
        """Encode ``frame`` into the next ``count`` slots of every rung."""
        if not count:
            return
        first = self.clock.next - count
        if self.max_slot is not None and self.clock.next > self.max_slot:
            raise BadMedia(
                f"the video's timestamps jump past its end after {self.source.reached:.1f} s"
            )
        if self.rotate is not None:
            frame = self.rotate(frame)
        # Full-range (JPEG) pictures, common from phones, are converted to the limited range
        # players assume for H.264, not just relabelled. Others pass as they are (a picture
        # already at a rung's size and format is then not even copied).
        full = frame.color_range == ColorRange.JPEG
        ranges = {"src_color_range": ColorRange.JPEG, "dst_color_range": ColorRange.MPEG}
        for output in self.outputs:
            rung = output.rung
            picture = output.scaler.reformat(
                frame,
                rung.width,
                rung.height,
                "yuv420p",
                interpolation=Interpolation.BICUBIC,
                # One thread: x264's threads keep the cores busy, and swscale's own slice
                # threads (PyAV's default) then wait for a core each: 10 s of 27 s measured.
                threads=1,
                **(ranges if full else {}),
            )
            picture.time_base = 1 / self.rate
            for slot in range(first, first + count):
                picture.pts = slot
                # A decoded picture keeps its type (P, B) and x264 would obey it: always say.
                picture.pict_type = PICTURE_I if slot % self.keyint == 0 else PICTURE_AUTO
                output.encode(picture)
        self._progress(self.clock.next / self.expected_slots)

    def _progress(self, fraction: float) -> None:
        if self.stop is not None and self.stop.is_set():  # checked every frame: stops at once
            raise Cancelled("the transcode was stopped")
        step = min(PROGRESS_STEPS - 1, int(fraction * PROGRESS_STEPS))
        if self.on_progress is not None and step > self.progress_step:
            self.progress_step = step
            self.on_progress(step / PROGRESS_STEPS)

    def _check_length(self, end: Fraction) -> None:
        declared = self.source.declared
        decoded = float(end - (self.clock.start or 0))
        if declared is not None and decoded < declared * 0.98 - TRUNCATED_SECONDS:
            raise BadMedia(
                f"the video stops after {decoded:.1f} s of its {declared:.1f} s: "
                "the file is cut short"
            )

    def _finish(self) -> list[RungOutput]:
        for output in self.outputs:
            output.encode(None)
        duration = Fraction(self.clock.next, self.rate)
        if self.audio is not None:
            self.audio.finish(duration)
        results = []
        for output in self.outputs:
            codecs = avc_codecs(bytes(output.video.codec_context.extradata or b""))
            if output.audio is not None:
                codecs += ",mp4a.40.2"
            output.close()
            size = output.partial.stat().st_size
            results.append(
                RungOutput(
                    name=output.rung.name,
                    path=str(output.path),
                    width=output.rung.width,
                    height=output.rung.height,
                    bandwidth=round(size * 8 / duration),
                    duration=float(duration),
                    frame_rate=float(self.rate),
                    codecs=codecs,
                )
            )
        for output in self.outputs:
            output.partial.replace(output.path)
        self.done = True
        if self.on_progress is not None:
            self.on_progress(1.0)
        return results

    def close(self) -> None:
        """Release everything; unless the ladder is complete, remove what was written."""
        for output in self.outputs:
            with contextlib.suppress(av.FFmpegError, OSError):  # failing anyway
                output.close()
            if not self.done:
                output.partial.unlink(missing_ok=True)
        self.source.close()
