"""Ingest: the work after an upload, each part beside a reference measured in the same run.

    .venv/bin/python bench/ingest.py [--only ladder] [--duration 20] [--trials 3]

Prints a markdown table (and writes it to bench/out/ingest.md). Sections (``--only`` picks):

* **upload**: a tus upload of ``--upload-mb`` (1024) MB over loopback to `clipsync serve` (one
  granian worker) on a local folder, in one PATCH and in 64 MB PATCHes streamed from the
  client, MD5 computed on the way; beside the same bytes written straight to the same disk.
  Target >= 200 MB/s, with the gateway's memory flat (peak RSS reported).
* **playable**: a 60 s 1080p H.264/AAC upload: the time from the PATCH carrying the last byte
  until the API says ``playable`` (joining the parts, validation by PyAV). Target <= 2 s.
* **ladder**: ``packager.ladder.transcode`` with the default ladder (1080p, 720p, 480p, 360p;
  veryfast) on a 1080p30 H.264/AAC source with real entropy (synthetic picture plus noise, about
  5 Mbit/s), beside Debian's ffmpeg CLI making the same ladder from the same source in one run:
  decoded once, ``split`` then ``scale`` (bicubic, the same sizes) per rung, the same libx264
  preset, bitrates, keyint/forced-IDR options and AAC. The two alternate trial by trial and the
  median trial of each is reported, with its CPU time (user + system, all threads), and each
  pair's ratio (a busy machine slows both of a pair alike). Target: ffmpeg's time / ours >= 0.9.

* **beside**: playback while a transcode runs on the same machine: wrk on cached 360p segments
  of a gateway (one granian worker, ``jobs.gateway_workers = 1``), idle and then while that
  gateway transcodes a 60 s 1080p upload (its child process at ``ingest.transcode_nice``), with
  the default 19 and with 0 (the child as urgent as the gateway). How far the job got in the
  same seconds is reported beside: the price of the priority.

The sources are generated once by PyAV into bench/out/ingest/ and reused.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.segment import FIXTURE, OUT, cpu_name, generated, media_uris, wrk
from packager.ladder import transcode
from packager.ladder_plan import LadderConfig, PlannedRung, output_rate, plan

TARGET_RATIO = 0.9

# A row of the report: measurement, value, reference or target.
Row = tuple[str, str, str]


def machine() -> str:
    cpu = cpu_name()
    ffmpeg = shutil.which("ffmpeg")
    version = "not found"
    if ffmpeg:
        version = subprocess.run([ffmpeg, "-version"], capture_output=True, text=True).stdout
        version = " ".join(version.split()[:3])
    codec = ".".join(map(str, av.library_versions["libavcodec"]))
    return (
        f"{cpu}, {len(os.sched_getaffinity(0))} cores; Python "
        f"{platform.python_version()}, PyAV {av.__version__} (libavcodec {codec}); {version}"
    )


# --- ladder ----------------------------------------------------------------------------------


def ladder_source(duration: int) -> Path:
    """The segment benchmark's 1080p30 source (about 5 Mbit/s), ``duration`` long, moov first."""
    spec = dataclasses.replace(FIXTURE, duration=duration, faststart=True)
    path = OUT / "ingest" / f"source-1080p30-{duration}s.mp4"
    return generated(path, spec, f"the {duration} s 1080p source")


def ffmpeg_command(
    ffmpeg: str,
    source: Path,
    out: Path,
    rungs: list[PlannedRung],
    rate: Fraction,
    config: LadderConfig,
) -> list[str]:
    """One ffmpeg run making the same ladder: decode once, split, scale per rung, encode."""
    keyint = max(1, round(config.gop_seconds * rate))
    labels = [f"v{i}" for i in range(len(rungs))]
    graph = f"[0:v]split={len(rungs)}" + "".join(f"[s{i}]" for i in range(len(rungs)))
    for i, rung in enumerate(rungs):
        graph += f";[s{i}]scale={rung.width}:{rung.height}:flags=bicubic[{labels[i]}]"
    command = [ffmpeg, "-nostdin", "-v", "error", "-y", "-i", str(source)]
    command += ["-filter_complex", graph]
    for label, rung in zip(labels, rungs, strict=True):
        bitrate = str(rung.video_bitrate)
        command += ["-map", f"[{label}]", "-map", "0:a?", "-c:v", "libx264"]
        command += ["-preset", config.preset, "-profile:v", "high", "-pix_fmt", "yuv420p"]
        command += ["-x264-params", f"keyint={keyint}:min-keyint={keyint}:scenecut=0:open-gop=0"]
        command += [
            "-forced-idr",
            "1",
            "-force_key_frames",
            f"expr:gte(t,n_forced*{config.gop_seconds})",
        ]
        command += ["-b:v", bitrate, "-maxrate", bitrate, "-bufsize", str(2 * rung.video_bitrate)]
        command += ["-fps_mode", "cfr", "-r", str(rate)]
        command += ["-c:a", "aac", "-b:a", str(config.audio_bitrate), "-ac", "2"]
        command += ["-ar", str(config.audio_rate), "-movflags", "+faststart"]
        command.append(str(out / f"{rung.name}.mp4"))
    return command


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def timed(run: Callable[[], object], who: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of ``who``: this process or its children)."""
    cpu, start = _cpu(who), time.perf_counter()
    run()
    return time.perf_counter() - start, _cpu(who) - cpu


def ladder_rows(args: argparse.Namespace) -> list[Row]:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise SystemExit("ffmpeg is not installed: apt-get install ffmpeg")
    source = ladder_source(args.duration)
    config = LadderConfig()
    with av.open(str(source)) as container:
        video = container.streams.video[0]
        width, height, frames = video.width, video.height, video.frames
        rate = output_rate(video.average_rate, config.max_fps)
    rungs = plan(width, height, 0, config.rungs)
    ours: list[tuple[float, float]] = []
    theirs: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory(prefix="clipsync-bench-") as tmp:
        work = Path(tmp)
        command = ffmpeg_command(ffmpeg, source, work / "ffmpeg", rungs, rate, config)
        (work / "ffmpeg").mkdir()
        for n in range(args.trials):
            print(f"ladder trial {n + 1}/{args.trials} ...", file=sys.stderr, flush=True)
            ours_run = (
                lambda: transcode(source, work / "ours", config),
                resource.RUSAGE_SELF,
                ours,
            )
            theirs_run = (
                lambda: subprocess.run(command, check=True, timeout=3600),
                resource.RUSAGE_CHILDREN,
                theirs,
            )
            # Alternate who goes first: the second of a pair may find a warmer (or busier) machine.
            for run, who, into in (ours_run, theirs_run) if n % 2 == 0 else (theirs_run, ours_run):
                into.append(timed(run, who))
        sizes = {
            rung.name: (
                (work / "ours" / f"{rung.name}.mp4").stat().st_size,
                (work / "ffmpeg" / f"{rung.name}.mp4").stat().st_size,
            )
            for rung in rungs
        }
    our_wall, our_cpu = sorted(ours)[len(ours) // 2]
    their_wall, their_cpu = sorted(theirs)[len(theirs) // 2]
    ratio = their_wall / our_wall
    pairs = [t[0] / o[0] for o, t in zip(ours, theirs, strict=True)]
    seconds = frames / float(rate)
    verdict = "met" if ratio >= TARGET_RATIO else "**not met**"
    ladder = ", ".join(f"{r.name} {r.width}x{r.height}" for r in rungs)
    rows: list[Row] = [
        (
            f"source: {width}x{height}, {frames} frames ({seconds:.0f} s at {float(rate):g} fps), "
            f"H.264 + AAC, {source.stat().st_size * 8 / seconds / 1e6:.1f} Mbit/s",
            f"ladder: {ladder}; preset {config.preset}",
            "",
        ),
        (
            "packager.ladder.transcode, median trial: wall, fps, CPU",
            f"{our_wall:.2f} s, {frames / our_wall:.1f} fps, CPU {our_cpu:.1f} s",
            "trials: " + ", ".join(f"{w:.2f} s" for w, _ in ours),
        ),
        (
            "ffmpeg CLI, same ladder in one run (reference), median trial: wall, fps, CPU",
            f"{their_wall:.2f} s, {frames / their_wall:.1f} fps, CPU {their_cpu:.1f} s",
            "trials: " + ", ".join(f"{w:.2f} s" for w, _ in theirs),
        ),
        (
            "speed: ffmpeg time / our time (median trials)",
            f"{ratio:.2f}",
            f"target >= {TARGET_RATIO}: {verdict}; trial pairs: "
            + ", ".join(f"{r:.2f}" for r in pairs)
            + f" (median {statistics.median(pairs):.2f})",
        ),
        (
            "CPU: ffmpeg's / ours (median trials; less sensitive to a busy machine)",
            f"{their_cpu / our_cpu:.2f}",
            "trial pairs: "
            + ", ".join(f"{t[1] / o[1]:.2f}" for o, t in zip(ours, theirs, strict=True)),
        ),
    ]
    rows += [
        (
            f"{name}: average bitrate, ours / ffmpeg's",
            f"{ours_size * 8 / seconds / 1e6:.2f} / {theirs_size * 8 / seconds / 1e6:.2f} Mbit/s",
            "same encoder settings, so about equal",
        )
        for name, (ours_size, theirs_size) in sizes.items()
    ]
    return rows


# --- upload throughput and last byte -> playable ------------------------------------------


class Gateway:
    """`clipsync serve` (one granian worker) over a fresh library and SQLite catalog, with a
    signed-in user: what an uploader talks to."""

    SECRET = "b" * 40

    def __init__(self, folder: Path, jobs: int = 0, nice: int = 19) -> None:
        import msgspec

        from conf import Settings
        from tests.serving import run_server

        self.root = folder / "library"
        self.root.mkdir(parents=True)
        raw = msgspec.to_builtins(Settings())
        raw["storage"]["library"] = str(self.root)
        raw["catalog"]["url"] = f"sqlite:///{folder / 'catalog.db'}"
        raw["auth"]["jwt_secret"] = self.SECRET
        raw["ingest"]["max_upload_mb"] = 4096
        raw["jobs"]["gateway_workers"] = jobs  # 0: measure the upload path, not a transcode
        raw["ingest"]["transcode_nice"] = nice
        self.server = run_server(msgspec.convert(raw, Settings), folder / "gateway.log")
        self.catalog_url = raw["catalog"]["url"]
        self.auth = {"authorization": f"Bearer {self._token()}"}

    def _token(self) -> str:
        import asyncio

        from auth.tokens import AccessTokens
        from backends.catalog import Catalog, engines

        async def seed() -> str:
            catalog = Catalog(engines.create(self.catalog_url))
            try:
                return (await catalog.create_user("bench@example.com")).id
            finally:
                await catalog.close()

        user = asyncio.run(seed())
        return AccessTokens({"k1": self.SECRET.encode()}, "k1", 3600).issue(user, "user")

    def new_upload(self, length: int) -> tuple[str, str]:
        import base64

        import httpx

        r = httpx.post(
            f"{self.server.base}/api/v1/videos",
            json={"title": "bench", "privacy": "public"},
            headers=self.auth,
        )
        r.raise_for_status()
        video = r.json()["video"]["id"]
        meta = "video_id " + base64.b64encode(video.encode()).decode()
        meta += ",filename " + base64.b64encode(b"bench.mp4").decode()
        r = httpx.post(
            f"{self.server.base}/api/v1/uploads",
            headers={
                **self.auth,
                "tus-resumable": "1.0.0",
                "upload-length": str(length),
                "upload-metadata": meta,
            },
        )
        r.raise_for_status()
        return video, self.server.base + r.headers["location"]

    def patch(self, url: str, offset: int, body: object, length: int) -> None:
        import httpx

        r = httpx.patch(
            url,
            content=body,  # type: ignore[arg-type]
            headers={
                **self.auth,
                "tus-resumable": "1.0.0",
                "content-type": "application/offset+octet-stream",
                "upload-offset": str(offset),
                "content-length": str(length),
            },
            timeout=600,
        )
        assert r.status_code == 204, r.text

    def delete_video(self, video: str) -> None:
        import httpx

        r = httpx.delete(f"{self.server.base}/api/v1/videos/{video}", headers=self.auth)
        assert r.status_code == 204, r.text

    def peak_rss_mb(self) -> float:
        """Largest resident size any process of the gateway reached (VmHWM), in MB."""
        pids = [self.server.process.pid]
        children = Path(f"/proc/{pids[0]}/task/{pids[0]}/children")
        if children.exists():
            pids += [int(p) for p in children.read_text().split()]
        peak = 0
        for pid in pids:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        return peak / 1024

    def close(self) -> None:
        from tests.serving import stop_server

        stop_server(self.server)


def _blocks(total: int, block: bytes):  # type: ignore[no-untyped-def]
    sent = 0
    while sent < total:
        piece = block[: min(len(block), total - sent)]
        sent += len(piece)
        yield piece


def _disk_write(path: Path, size: int, block: bytes, every: int) -> float:
    """The reference: the same bytes written by one Python loop, fsynced every ``every``
    bytes as the gateway does at the end of each PATCH; MB/s."""
    started = time.perf_counter()
    with path.open("wb") as out:
        for position, piece in enumerate(_blocks(size, block)):
            out.write(piece)
            if (position + 1) * len(block) % every == 0:
                out.flush()
                os.fsync(out.fileno())
        out.flush()
        os.fsync(out.fileno())
    speed = size / (time.perf_counter() - started) / 1e6
    path.unlink()
    return speed


def upload_rows(args: argparse.Namespace) -> list[Row]:
    size = args.upload_mb * 1024 * 1024
    block = os.urandom(1024 * 1024)
    # One PATCH (tus-js-client's and tuspy's default), and 64 MB PATCHes (a client with a
    # chunk size, or a resumed upload).
    chunks = (size, 64 * 1024 * 1024)
    ours: dict[int, list[float]] = {chunk: [] for chunk in chunks}
    disk: dict[int, list[float]] = {chunk: [] for chunk in chunks}
    with tempfile.TemporaryDirectory(prefix="bench-upload-") as work:
        folder = Path(work)
        gate = Gateway(folder)
        try:
            idle = gate.peak_rss_mb()
            # This disk writes slower as it fills (a VM's disk): each upload is paired with the
            # reference written just before it, and the files go after each trial.
            for _ in range(args.trials):
                for chunk in chunks:
                    os.sync()
                    disk[chunk].append(_disk_write(folder / "reference.bin", size, block, chunk))
                    video, url = gate.new_upload(size)
                    os.sync()
                    started = time.perf_counter()
                    for offset in range(0, size, chunk):
                        length = min(chunk, size - offset)
                        gate.patch(url, offset, _blocks(length, block), length)
                    ours[chunk].append(size / (time.perf_counter() - started) / 1e6)
                    gate.delete_video(video)
            peak = gate.peak_rss_mb()
        finally:
            gate.close()
    rows: list[Row] = []
    for chunk in chunks:
        how = "in one PATCH" if chunk >= size else f"in {chunk // 2**20} MB PATCHes"
        speed, reference = statistics.median(ours[chunk]), statistics.median(disk[chunk])
        rows.append(
            (
                f"tus upload, {args.upload_mb} MB {how} over loopback to the local folder "
                f"(MD5 on the way), median of {args.trials}",
                f"{speed:.0f} MB/s",
                f"target >= 200 MB/s; disk write of the same bytes {reference:.0f} MB/s "
                f"({speed / reference:.0%} of it)",
            )
        )
    rows.append(
        (
            "gateway peak RSS during those uploads",
            f"{peak:.0f} MB",
            f"{idle:.0f} MB before them: flat means not growing with the upload's size",
        )
    )
    return rows


def camera_source() -> Path:
    """A 60 s 1080p camera-like file (moov at the end, so validation must find it there),
    generated once."""
    spec = dataclasses.replace(FIXTURE, noise=8, preset="ultrafast")
    return generated(OUT / "ingest" / "source-1080p30-60s-h264.mp4", spec, "the source")


def playable_rows(args: argparse.Namespace) -> list[Row]:
    import httpx

    source = camera_source()
    data = source.read_bytes()
    times = []
    with tempfile.TemporaryDirectory(prefix="bench-playable-") as work:
        gate = Gateway(Path(work))
        try:
            for _ in range(args.trials):
                video, url = gate.new_upload(len(data))
                head = len(data) - 1024 * 1024
                gate.patch(url, 0, data[:head], head)
                started = time.perf_counter()  # the last MB carries the last byte
                gate.patch(url, head, data[head:], len(data) - head)
                while True:
                    got = httpx.get(
                        f"{gate.server.base}/api/v1/videos/{video}", headers=gate.auth
                    ).json()
                    if got["status"] in ("playable", "failed", "processing"):
                        break
                    time.sleep(0.01)
                assert got["status"] == "playable", got
                times.append(time.perf_counter() - started)
        finally:
            gate.close()
    return [
        (
            f"last upload byte -> playable, 60 s 1080p H.264/AAC ({len(data) / 1e6:.0f} MB), "
            f"median of {args.trials}",
            f"{statistics.median(times):.2f} s",
            f"target <= 2 s (each: {', '.join(f'{t:.2f}' for t in times)})",
        )
    ]


# --- playback beside a transcode ---------------------------------------------------------------


def beside_rows(args: argparse.Namespace) -> list[Row]:
    import httpx

    source = camera_source()
    clip = dataclasses.replace(FIXTURE, duration=20, width=640, height=360, bitrate=800_000)
    play = generated(OUT / "ingest" / "play-360p.mp4", clip, "the 360p clip to play")
    data = source.read_bytes()
    rows: list[Row] = []
    for nice in (19, 0):
        with tempfile.TemporaryDirectory(prefix="bench-beside-") as work:
            gate = Gateway(Path(work), jobs=1, nice=nice)
            try:
                shutil.copy(play, gate.root / "play.mp4")
                base = gate.server.base
                playlist = "/vod/play.mp4/main/index.m3u8"
                paths = media_uris(playlist, httpx.get(base + playlist).raise_for_status().text)
                for path in paths:  # warm: every segment built and cached
                    httpx.get(base + path).raise_for_status()
                wrk(base, paths, 2, 8, Path(work))
                idle = wrk(base, paths, args.beside_seconds, 8, Path(work))
                video, url = gate.new_upload(len(data))
                gate.patch(url, 0, data, len(data))
                before = 0
                while before < 3:  # past validation (0-2%): the ladder is being encoded
                    time.sleep(0.2)
                    got = httpx.get(f"{base}/api/v1/videos/{video}", headers=gate.auth).json()
                    before = got["progress"]
                    assert got["status"] in ("uploaded", "playable", "processing"), got
                busy = wrk(base, paths, args.beside_seconds, 8, Path(work))
                got = httpx.get(f"{base}/api/v1/videos/{video}", headers=gate.auth).json()
                assert got["progress"] < 90, got  # the ladder was still encoding throughout
                done = got["progress"] - before
            finally:
                gate.close()
        label = "default" if nice == 19 else "same priority as the gateway"
        rows += [
            (
                f"cached 360p segments, 1 granian worker, idle (reference; nice {nice} run)",
                f"{idle['rps']:.0f} seg/s, p99 {idle['p99_ms']:.1f} ms",
                "",
            ),
            (
                f"the same during a 1080p ladder transcode, ingest.transcode_nice = {nice} "
                f"({label})",
                f"{busy['rps']:.0f} seg/s, p99 {busy['p99_ms']:.1f} ms",
                f"{busy['rps'] / idle['rps'] * 100:.0f}% of idle; the job advanced "
                f"{done} percentage points in those {args.beside_seconds} s",
            ),
        ]
    return rows


# --- the report ------------------------------------------------------------------------------

SECTIONS: dict[str, Callable[[argparse.Namespace], list[Row]]] = {
    "upload": upload_rows,
    "playable": playable_rows,
    "ladder": ladder_rows,
    "beside": beside_rows,
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only", action="append", choices=sorted(SECTIONS), help="run only this section"
    )
    parser.add_argument("--duration", type=int, default=20, help="ladder: source seconds")
    parser.add_argument("--trials", type=int, default=3, help="alternating trials per side")
    parser.add_argument("--upload-mb", type=int, default=1024, help="upload: size in MB")
    parser.add_argument("--beside-seconds", type=int, default=10, help="beside: wrk seconds")
    args = parser.parse_args()
    lines = [f"Machine: {machine()}", ""]
    for name in args.only or list(SECTIONS):
        lines += [
            f"### {name}",
            "",
            "| measurement | value | reference / target |",
            "|---|---|---|",
        ]
        lines += [f"| {a} | {b} | {c} |" for a, b, c in SECTIONS[name](args)]
        lines.append("")
    report = "\n".join(lines)
    OUT.mkdir(exist_ok=True)
    (OUT / "ingest.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
