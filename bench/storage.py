"""Just-in-time packaging from object storage: requests, bytes and latency per segment.

For the 1080p bench fixture on Azurite (Azure Blob) and on moto's S3 server, both on this
machine, the gateway's own path (in-process ASGI, the same code a granian worker runs):

* cold index build: storage requests (stat + reads) for a file with moov at the front and for
  the same file with moov at the end;
* every fMP4 and TS segment: storage requests, bytes fetched / bytes served, latency median and
  p99; the reference, measured in the same run right after each segment, is one ranged GET
  through the same client of the smallest byte span holding all of that segment's samples
  (what a naive origin would fetch), so the ratio shows the planner's cost over one request.

    .venv/bin/python bench/storage.py        # a few minutes; needs `cd tests/player && npm ci`
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backends.blocking import BlockingRunner
from backends.storage import RemoteStorage, open_storage
from bench.segment import OUT, fixture, machine, percentile
from conf.settings import StorageSettings
from gateway.app import create_app
from packager.samples import segment_ranges
from tests.backends import azure_settings, s3_settings, settings_with, upload_azure, upload_s3
from tests.stores import Azurite, MotoS3

FILES = {"front": "1080p-front.mp4", "end": "1080p.mp4"}


def front_copy(source: Path) -> Path:
    """The fixture remuxed with moov at the front (Debian's ffmpeg, stream copy)."""
    target = source.with_name(FILES["front"])
    if not target.exists():
        subprocess.run(
            [
                "ffmpeg",
                "-v",
                "error",
                "-y",
                "-i",
                str(source),
                "-c",
                "copy",
                "-map",
                "0",
                "-movflags",
                "+faststart",
                str(target),
            ],
            check=True,
        )
    return target


async def measure(name: str, storage_settings: StorageSettings, rounds: int) -> dict[str, Any]:
    settings = settings_with(storage_settings)
    runner = BlockingRunner(settings.server.blocking_threads)
    results: dict[str, Any] = {"name": name}
    for placement, file in FILES.items():
        # A fresh gateway each time: nothing cached.
        storage = open_storage(settings.storage, runner)
        assert isinstance(storage, RemoteStorage)
        app = create_app(settings, storage)
        try:
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://bench"
            ) as http:
                await storage.stat("")  # connect outside the count
                storage.counts.requests.clear()
                response = await http.get(f"/vod/{file}/main/index.m3u8")
                assert response.status_code == 200, response.text
                counts = dict(storage.counts.requests)
                results[f"index_{placement}"] = (counts.get("head", 0), counts.get("get", 0))
                if placement == "front":
                    results.update(await segments(http, storage, app, file, rounds))
        finally:
            await storage.close()
    return results


async def segments(
    http: httpx.AsyncClient, storage: RemoteStorage, app: Any, file: str, rounds: int
) -> dict[str, Any]:
    library = app.state.library
    rendition = await library.rendition(file, "main")
    count = len(rendition.plan.times_ms) - 1
    gap, extra = library.settings.vod.read_coalesce_gap, library.settings.vod.read_overfetch
    out: dict[str, Any] = {"segments": count}
    store = storage._store  # the counted store: the reference GET goes through the same client
    assert store is not None
    for fmt, extension in (("fmp4", "m4s"), ("ts", "ts")):
        requests: list[int] = []
        fetched = served = 0
        times: list[float] = []
        reference: list[float] = []
        for _ in range(rounds):
            for number in range(1, count + 1):
                storage.counts.requests.clear()
                storage.counts.bytes_read = 0
                started = time.perf_counter()
                response = await http.get(f"/vod/{file}/main/seg-{number}.{extension}")
                times.append(time.perf_counter() - started)
                assert response.status_code == 200
                requests.append(storage.counts.total)
                fetched += storage.counts.bytes_read
                served += len(response.content)
                ranges = segment_ranges(rendition.index, rendition.plan, number - 1, gap, extra)
                first, last = ranges[0][0], ranges[-1][1]
                started = time.perf_counter()
                await store.get(rendition.info.path, first, last, None)
                reference.append(time.perf_counter() - started)
        out[fmt] = {
            "requests": statistics.mean(requests),
            "requests_max": max(requests),
            "ratio": fetched / served,
            "median": statistics.median(times) * 1000,
            "p99": percentile(times, 0.99) * 1000,
            "ref_median": statistics.median(reference) * 1000,
            "ref_p99": percentile(reference, 0.99) * 1000,
            "served_mb": served / len(times) / 1e6,
        }
    return out


def table(rows: list[dict[str, Any]], rounds: int) -> str:
    lines = [
        "| store | measurement | value | reference / target |",
        "|---|---|---|---|",
    ]
    for r in rows:
        for placement, target in (("front", "target <= 2"), ("end", "")):
            heads, gets = r[f"index_{placement}"]
            lines.append(
                f"| {r['name']} | cold index build, moov at the {placement}: stat + reads "
                f"| {heads} + {gets} = {heads + gets} requests | {target} |"
            )
        for fmt in ("fmp4", "ts"):
            s = r[fmt]
            lines.append(
                f"| {r['name']} | {fmt} segment: storage requests, mean (max) "
                f"| {s['requests']:.2f} ({s['requests_max']}) | |"
            )
            lines.append(
                f"| {r['name']} | {fmt} segment: bytes fetched / bytes served "
                f"| {s['ratio']:.3f} | target <= 1.1 |"
            )
            lines.append(
                f"| {r['name']} | {fmt} segment latency, median / p99 ({s['served_mb']:.2f} MB) "
                f"| {s['median']:.1f} / {s['p99']:.1f} ms "
                f"| one GET of the span: {s['ref_median']:.1f} / {s['ref_p99']:.1f} ms "
                f"(x{s['median'] / s['ref_median']:.2f} median) |"
            )
    header = (
        f"Machine: {machine()}\n\n{rows[0]['segments']} segments x {rounds} rounds per format; "
        "stores on loopback (Azurite 3.35.0 with disk persistence, moto's ThreadedMotoServer).\n"
    )
    return header + "\n" + "\n".join(lines)


async def run(rounds: int) -> str:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    source = fixture()
    files = [front_copy(source), source]
    azurite, moto = Azurite(), MotoS3()
    try:
        named = [(path.name, path) for path in files]
        upload_azure(named, azurite)
        upload_s3(named, moto)
        rows = [
            await measure("Azurite", azure_settings(azurite), rounds),
            await measure("moto S3", s3_settings(moto), rounds),
        ]
    finally:
        azurite.close()
        moto.stop()
    return table(rows, rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="passes over all segments")
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    print(asyncio.run(run(args.rounds)))


if __name__ == "__main__":
    main()
