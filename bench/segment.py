"""Just-in-time packaging speed, beside static nginx serving the same bytes, in one run.

    .venv/bin/python bench/segment.py [--seconds 10] [--connections 8]

Prints a markdown table (and writes it to bench/out/segment.md):

* index build time: the 1080p fixture, and a synthetic two-hour moov;
* per-segment packaging time in-process, fMP4 and TS, median and p99 (read from the page cache,
  mux, and join into one buffer: a complete segment in memory);
* HTTP throughput of segment requests from one granian worker (``clipsync serve``) and, as the
  reference, Debian's nginx with one worker serving the very same segment bytes as static files,
  both loaded by wrk with the same connections for the same time.

The fixture is 1080p, 30 fps, 5 Mbit/s, 60 s, 2 s GOP, B-frames and AAC, generated once into
bench/out/ by PyAV. Needs Debian's nginx and wrk (``apt-get install nginx-light wrk``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backends.blocking import BlockingRunner
from backends.storage import Storage, open_storage
from conf import Settings
from conf.settings import StorageSettings
from loadtests.player import media
from packager import reader
from packager.index import MediaIndex
from packager.mp4 import read_index
from packager.mux import ts
from packager.segmenter import SegmenterConfig, SegmentPlan, plan
from packager.synth import SynthSpec, write
from tests.serving import free_port, run_server, stop_process, stop_server

OUT = Path(__file__).resolve().parent / "out"
FIXTURE = SynthSpec(
    duration=60,
    width=1920,
    height=1080,
    fps=Fraction(30),
    bitrate=5_000_000,
    noise=24,
    gop_seconds=2.0,
    bframes=2,
    preset="veryfast",
)
GAP = 64 * 1024
MAX_MOOV = 1 << 30


def generated(path: Path, spec: SynthSpec, what: str) -> Path:
    """``path``, encoded from ``spec`` by PyAV the first time (kept for later runs)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        print(f"generating {what} (once) ...", file=sys.stderr, flush=True)
        partial = path.with_name(f".partial-{path.name}")
        write(partial, spec)
        partial.replace(path)
    return path


def fixture() -> Path:
    return generated(OUT / "library" / "1080p.mp4", FIXTURE, "the 1080p fixture")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def time_index(storage: Storage, name: str, runner: BlockingRunner, runs: int) -> float:
    info = await storage.stat(name)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        await read_index(storage, info, runner, MAX_MOOV)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


async def in_process(storage: Storage, runner: BlockingRunner, rounds: int) -> dict[str, object]:
    """Time the gateway's own code path for each segment: ``packager.reader`` then the writer."""
    info = await storage.stat("1080p.mp4")
    index = await read_index(storage, info, runner, MAX_MOOV)
    cut = plan(index, SegmenterConfig())
    results: dict[str, object] = {"segments": cut.count, "plan": cut, "index": index}
    for name in ("fmp4", "ts"):
        totals: list[float] = []
        muxing: list[float] = []
        sizes: list[int] = []
        for _ in range(rounds):
            for k in range(cut.count):
                start = time.perf_counter()
                if name == "fmp4":
                    body = await reader.fmp4_segment(storage, info, index, cut, k, GAP)
                    read_done = start  # read and packaging are one step: bytes land in place
                else:
                    source = await reader.samples(storage, info, index, cut, k, GAP)
                    read_done = time.perf_counter()
                    body = ts.write_segment(index, cut, k, source)
                end = time.perf_counter()
                totals.append(end - start)
                muxing.append(end - read_done)
                sizes.append(body.size)
        results[name] = (totals, muxing, sizes)
    return results


def write_static(results: dict[str, object], storage: Storage, root: Path) -> list[str]:
    """Write every fMP4 segment as a static file: the very bytes the gateway serves."""
    index, cut = results["index"], results["plan"]
    assert isinstance(index, MediaIndex)
    assert isinstance(cut, SegmentPlan)

    async def dump() -> list[str]:
        info = await storage.stat("1080p.mp4")
        folder = root / "vod" / "1080p.mp4" / "main"
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for k in range(cut.count):
            body = await reader.fmp4_segment(storage, info, index, cut, k, GAP)
            (folder / f"seg-{k + 1}.m4s").write_bytes(body.join())
            paths.append(f"/vod/1080p.mp4/main/seg-{k + 1}.m4s")
        return paths

    return asyncio.run(dump())


def media_uris(playlist: str, text: str) -> list[str]:
    """The URL paths of the segments a media playlist (served at ``playlist``) lists, read as
    the load tests' players read it (queries such as ``?token=`` kept)."""
    return [uri for _, uri in media(text, playlist).segments]


def wrk(
    base: str, paths: list[str], seconds: int, connections: int, script_dir: Path
) -> dict[str, float]:
    script = script_dir / "segments.lua"
    listed = ", ".join(f'"{p}"' for p in paths)
    script.write_text(
        f"local paths = {{{listed}}}\nlocal i = 0\n"
        "request = function()\n  i = i % #paths + 1\n  return wrk.format('GET', paths[i])\nend\n"
        "done = function(summary, latency, requests)\n"
        "  io.write(string.format('ERRORS %d %d\\n', summary.errors.status, summary.errors.read))\n"
        "end\n"
    )
    run = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), base],
        capture_output=True,
        text=True,
        check=True,
    )
    text = run.stdout
    requests = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))  # type: ignore[union-attr]
    errors = re.search(r"ERRORS (\d+) (\d+)", text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", text)
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    return {
        "rps": requests,
        "errors": float(errors.group(1)) + float(errors.group(2)) if errors else 0.0,
        "non2xx": float(non2xx.group(1)) if non2xx else 0.0,
        "p99_ms": float(p99.group(1)) * scale[p99.group(2)] if p99 else float("nan"),
    }


def wait_for(url: str, process: subprocess.Popen[bytes]) -> None:
    import urllib.request

    for _ in range(200):
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {url}")
        try:
            with urllib.request.urlopen(url, timeout=1):  # noqa: S310 - our own loopback server
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server did not answer: {url}")


def start_nginx(root: Path, port: int, work: Path) -> subprocess.Popen[bytes]:
    conf = work / "nginx.conf"
    conf.write_text(
        f"""worker_processes 1;
daemon off;
master_process on;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  types {{ video/mp4 m4s; }}
  server {{
    listen 127.0.0.1:{port};
    root {root};
    location / {{ add_header Cache-Control "public, max-age=31536000, immutable"; }}
  }}
}}
"""
    )
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    return subprocess.Popen([binary, "-c", str(conf), "-p", str(work)], stderr=subprocess.DEVNULL)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def machine() -> str:
    cpu = cpu_name()

    def version(command: list[str]) -> str:
        try:
            out = subprocess.run(command, capture_output=True, text=True, check=False)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError):
            return "not found"

    import granian

    return (
        f"{cpu}, {os.cpu_count()} cores; Python {platform.python_version()}, "
        f"granian {granian.__version__}; {version(['nginx', '-v'])}; "
        f"{' '.join(version(['wrk', '-v']).split()[:2])}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=10, help="wrk duration per server")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections")
    parser.add_argument("--rounds", type=int, default=6, help="passes over the segments in-process")
    parser.add_argument("--trials", type=int, default=3, help="alternating wrk trials per server")
    args = parser.parse_args()

    source = fixture()
    runner = BlockingRunner(4)
    storage = open_storage(StorageSettings(library=str(source.parent)), runner)

    async def measure() -> tuple[float, float, int, dict[str, object]]:
        from tests.moovgen import write_big_moov

        own = await time_index(storage, "1080p.mp4", runner, 20)
        info = await storage.stat("1080p.mp4")
        video = (await read_index(storage, info, runner, MAX_MOOV)).video
        assert video is not None
        big = OUT / "library" / "two_hours.mp4"
        samples = 2 * 3600 * 30
        if not big.exists():
            write_big_moov(big, video.info, samples)
        moov = await time_index(storage, "two_hours.mp4", runner, 5)
        results = await in_process(storage, runner, args.rounds)
        return own, moov, samples, results

    own_index, big_index, big_samples, results = asyncio.run(measure())
    rows = [
        "| measurement | value | reference / target |",
        "|---|---|---|",
        f"| index build, this file (60 s, {results['index'].video.count} + "  # type: ignore[attr-defined]
        f"{results['index'].audio.count} samples) | {own_index * 1e3:.2f} ms | |",  # type: ignore[attr-defined]
        f"| index build, synthetic 2-hour moov ({big_samples} samples) | "
        f"{big_index * 1e3:.1f} ms | |",
    ]
    for name in ("fmp4", "ts"):
        totals, muxing, sizes = results[name]  # type: ignore[misc]
        target = "target: median <= 3 ms" if name == "fmp4" else ""
        rows.append(
            f"| {name} segment in-process (read + package), median / p99 over {len(totals)} "
            f"segments of {statistics.mean(sizes) / 1e6:.2f} MB | "
            f"{statistics.median(totals) * 1e3:.2f} / "
            f"{percentile(totals, 0.99) * 1e3:.2f} ms | {target} |"
        )
        if name == "ts":
            rows.append(
                f"| ts mux only (after the read), median / p99 | "
                f"{statistics.median(muxing) * 1e3:.2f} / "
                f"{percentile(muxing, 0.99) * 1e3:.2f} ms | |"
            )

    with tempfile.TemporaryDirectory(prefix="clipsync-bench-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # nginx's worker runs as an unprivileged user and must read the files
        static = work / "static"
        paths = write_static(results, storage, static)
        segment_mb = statistics.mean((static / p.lstrip("/")).stat().st_size for p in paths) / 1e6
        nginx_port = free_port()
        nginx = start_nginx(static, nginx_port, work)
        # The gateway exactly as the tests run it: clipsync serve, one granian worker.
        settings = Settings(storage=StorageSettings(library=str(source.parent)))
        gateway = run_server(settings, work / "gateway.log")
        gateway_port = int(gateway.base.rsplit(":", 1)[1])
        try:
            wait_for(f"http://127.0.0.1:{nginx_port}{paths[0]}", nginx)
            # Warm both: page cache for nginx, index cache for the gateway.
            wrk(f"http://127.0.0.1:{gateway_port}", paths, 2, args.connections, work)
            wrk(f"http://127.0.0.1:{nginx_port}", paths, 2, args.connections, work)
            # Alternate the two servers and keep each one's median trial, so a noisy moment on
            # a shared machine cannot favour either side.
            trials: dict[str, list[dict[str, float]]] = {"jit": [], "ref": []}
            for _ in range(args.trials):
                for key, port in (("jit", gateway_port), ("ref", nginx_port)):
                    base = f"http://127.0.0.1:{port}"
                    trials[key].append(wrk(base, paths, args.seconds, args.connections, work))
        finally:
            stop_server(gateway)
            stop_process(nginx)
    median = {k: sorted(v, key=lambda r: r["rps"])[len(v) // 2] for k, v in trials.items()}
    failed = {k: sum(r["errors"] + r["non2xx"] for r in v) for k, v in trials.items()}
    all_rps = {k: ", ".join(f"{r['rps']:.0f}" for r in v) for k, v in trials.items()}
    ratio = median["jit"]["rps"] / median["ref"]["rps"]
    for key, label in (
        ("jit", "ClipSync JIT fMP4, 1 granian worker"),
        ("ref", "static nginx, 1 worker (reference)"),
    ):
        res = median[key]
        rows.append(
            f"| HTTP {label}: median trial seg/s, MB/s, p99 latency | {res['rps']:.0f} seg/s, "
            f"{res['rps'] * segment_mb:.0f} MB/s, p99 {res['p99_ms']:.0f} ms | "
            f"trials: {all_rps[key]} seg/s; failed requests: {failed[key]:.0f} |"
        )
    rows.append(f"| HTTP JIT / static nginx | {ratio:.0%} | target: >= 50% |")
    header = (
        f"Machine: {machine()}\n\n"
        f"wrk: 1 thread, {args.connections} connections, {args.seconds} s per trial, "
        f"{args.trials} alternating trials per server, round-robin over the {len(paths)} "
        f"segments of the fixture.\n"
    )
    report = header + "\n" + "\n".join(rows) + "\n"
    OUT.mkdir(exist_ok=True)
    (OUT / "segment.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
