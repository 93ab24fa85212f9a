"""Cache tiers: warm segments and playlists from the gateway, beside static nginx, in one run.

    .venv/bin/python bench/cache.py [--seconds 8] [--connections 8] [--trials 3]

Prints a markdown table (and writes it to bench/out/cache.md):

* warm-segment throughput of one granian worker (``clipsync serve``) answering from its
  in-process (memory) tier: default cache settings, no Redis;
* the same from the Redis tier: a second gateway with ``cache.segment_budget_mb = 0`` and
  ``cache.redis_url`` set (a fresh key prefix, deleted at the end), so every segment request is
  a Redis GET;
* as the reference, Debian's nginx with one worker (sendfile on) serving the very same segment
  bytes as static files;
* cached media playlist requests/s from the memory-tier gateway against nginx serving the same
  playlist text as a static file (no Accept-Encoding on either side: no gzip).

wrk (1 thread, 8 connections) cycles through every segment of the fixture; the servers alternate
trial by trial and the median trial of each is reported. Afterwards each gateway's /metrics must
show its segment hits in the expected tier, no misses during the load and one build per segment.

The fixture is bench/segment.py's 1080p MP4 (generated once into bench/out/ by PyAV, reused).
Needs Debian's nginx and wrk, and Redis (``--redis``, default redis://127.0.0.1:6379/0).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import msgspec
import redis
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import BlockingConnectionPool, Redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backends.cache.redis_tier import connect, parse_url
from bench.segment import OUT, fixture, machine, media_uris, start_nginx, wait_for, wrk
from conf import Settings
from tests.serving import Server, free_port, run_server, stop_process, stop_server

ASSET = "1080p.mp4"
PLAYLIST = f"/vod/{ASSET}/main/index.m3u8"
# No gzip: wrk sends no Accept-Encoding, and neither do the requests made here.
PLAIN = {"accept-encoding": "identity"}

Counters = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def settings(library: Path, **cache: object) -> Settings:
    return msgspec.convert(
        {"storage": {"library": str(library)}, "server": {"workers": 1}, "cache": cache},
        Settings,
    )


def scrape(server: Server) -> Counters:
    """Every sample of the gateway's /metrics, by name and sorted labels."""
    text = httpx.get(f"{server.base}/metrics", timeout=10).text
    out: Counters = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def metric(counters: Counters, name: str, **labels: str) -> float:
    return counters.get((name, tuple(sorted(labels.items()))), 0.0)


def segment_paths(server: Server) -> tuple[str, list[str]]:
    """The media playlist text and the segment paths it lists."""
    response = httpx.get(server.base + PLAYLIST, headers=PLAIN, timeout=30)
    response.raise_for_status()
    assert "content-encoding" not in response.headers
    paths = media_uris(PLAYLIST, response.text)
    assert paths, response.text
    assert all(re.fullmatch(r".*/seg-\d+\.m4s", p) for p in paths), response.text
    return response.text, paths


def warm(server: Server, paths: list[str]) -> list[bytes]:
    """Request every segment once (each is built, or fetched, and cached)."""
    bodies = []
    with httpx.Client(base_url=server.base, headers=PLAIN, timeout=60) as client:
        for path in paths:
            response = client.get(path)
            if response.status_code != 200:
                raise RuntimeError(f"GET {path}: {response.status_code} {response.text[:200]}")
            bodies.append(response.content)
    return bodies


def wait_for_redis_writes(server: Server, expected: int, timeout: float = 15.0) -> float:
    """Wait until the background writes of the warmed segments reached Redis (or stopped)."""
    name = "clipsync_cache_written_bytes_total"
    deadline = time.monotonic() + timeout
    last, still_since = -1.0, time.monotonic()
    while time.monotonic() < deadline:
        written = metric(scrape(server), name, tier="redis", kind="segment")
        if written >= expected:
            return written
        if written != last:
            last, still_since = written, time.monotonic()
        elif time.monotonic() - still_since > 2.0:
            break
        time.sleep(0.1)
    return last


def drop_prefix(url: str, prefix: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        deleted = 0
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += client.delete(*batch)
                batch = []
        if batch:
            deleted += client.delete(*batch)
        return deleted
    finally:
        client.close()


def redis_version() -> str:
    try:
        out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True)
    except OSError:
        return "redis-server not found"
    found = re.search(r"v=(\S+)", out.stdout)
    return f"redis-server {found.group(1)}" if found else "redis-server (unknown version)"


async def client_reads(url: str, key: str, trials: int) -> dict[str, list[tuple[float, float]]]:
    """GETs of one segment-sized value, 8 in flight, by the cache tier's client and by a redis-py
    client with its defaults: (GET/s, CPU ms per GET) per trial, the two alternating."""
    ours = connect(parse_url(url), 5.0, 16)
    plain = Redis.from_pool(BlockingConnectionPool.from_url(url, max_connections=16, timeout=5.0))
    clients = {"cache tier client": ours, "redis-py defaults": plain}
    out: dict[str, list[tuple[float, float]]] = {name: [] for name in clients}

    async def load(client: Redis, count: int) -> None:
        for _ in range(count):
            async with client.pipeline(transaction=False) as pipe:  # what RedisTier.get sends
                pipe.get(key)
                pipe.pttl(key)
                value, _ = await pipe.execute()
            assert value is not None

    try:
        for client in clients.values():
            await load(client, 8)  # connections opened, allocator warm
        for _ in range(trials):
            for name, client in clients.items():
                start, cpu = time.perf_counter(), time.process_time()
                await asyncio.gather(*(load(client, 40) for _ in range(8)))
                elapsed, spent = time.perf_counter() - start, time.process_time() - cpu
                out[name].append((320 / elapsed, spent / 320 * 1e3))
    finally:
        await ours.aclose()
        await plain.aclose()
    return out


def check_tier(
    label: str, before: Counters, after: Counters, tier: str, segments: int
) -> tuple[str, list[str]]:
    """What the gateway's counters say about the load; and what contradicts the expectation."""

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    hits = {
        t: delta("clipsync_cache_hits_total", tier=t, kind="segment") for t in ("memory", "redis")
    }
    misses = {
        t: delta("clipsync_cache_misses_total", tier=t, kind="segment") for t in ("memory", "redis")
    }
    builds = metric(after, "clipsync_cache_builds_total", kind="segment")
    errors = sum(
        value - before.get(key, 0.0)
        for key, value in after.items()
        if key[0] == "clipsync_redis_errors_total"
    )
    trips = delta("clipsync_redis_breaker_trips_total")
    problems = []
    if hits[tier] <= 0:
        problems.append(f"{label}: no segment hits from tier={tier}")
    if misses[tier] != 0:
        problems.append(f"{label}: {misses[tier]:.0f} segment misses in tier={tier} under load")
    if tier == "memory" and hits["redis"]:
        problems.append(f"{label}: {hits['redis']:.0f} segment hits from tier=redis")
    if tier == "redis" and hits["memory"]:
        problems.append(f"{label}: {hits['memory']:.0f} segment hits from tier=memory")
    if builds != segments:
        problems.append(f"{label}: {builds:.0f} segment builds for {segments} segments")
    if errors or trips:
        problems.append(f"{label}: {errors:.0f} Redis errors, {trips:.0f} breaker trips")
    text = (
        f"segment hits memory {hits['memory']:.0f} / redis {hits['redis']:.0f}, misses in "
        f"{tier} {misses[tier]:.0f}, builds {builds:.0f} (segments: {segments})"
    )
    if tier == "redis":
        calls = delta("clipsync_redis_latency_seconds_count", op="get")
        spent = delta("clipsync_redis_latency_seconds_sum", op="get")
        mean = spent / calls * 1e3 if calls else float("nan")
        text += f", Redis errors {errors:.0f}, Redis GET mean {mean:.1f} ms over {calls:.0f} calls"
    return text, problems


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=8, help="wrk duration per trial")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections")
    parser.add_argument("--trials", type=int, default=3, help="alternating wrk trials per server")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="Redis URL")
    args = parser.parse_args()

    source = fixture()
    prefix = f"clipsync-bench-{uuid.uuid4().hex}:"
    servers: list[Server] = []
    nginx: subprocess.Popen[bytes] | None = None
    with tempfile.TemporaryDirectory(prefix="clipsync-bench-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # nginx's worker runs as an unprivileged user and must read the files
        try:
            # Gateway 1: default cache settings, no Redis: segments stay in process memory.
            memory = run_server(settings(source.parent), work / "memory.log")
            servers.append(memory)
            playlist_text, paths = segment_paths(memory)
            bodies = warm(memory, paths)
            # Gateway 2: nothing kept in process memory, every segment shared through Redis.
            shared = run_server(
                settings(
                    source.parent, segment_budget_mb=0, redis_url=args.redis, redis_prefix=prefix
                ),
                work / "redis.log",
            )
            servers.append(shared)
            if warm(shared, paths) != bodies:
                raise RuntimeError("the two gateways served different segment bytes")
            expected = sum(map(len, bodies))
            written = wait_for_redis_writes(shared, expected)
            # The reference: the very bytes the gateway served, and its playlist, as files.
            static = work / "static"
            for path, body in zip(paths, bodies, strict=True):
                target = static / path.lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(body)
            (static / PLAYLIST.lstrip("/")).write_text(playlist_text)
            nginx_port = free_port()
            nginx = start_nginx(static, nginx_port, work)
            nginx_base = f"http://127.0.0.1:{nginx_port}"
            wait_for(nginx_base + paths[0], nginx)
            served = httpx.get(nginx_base + PLAYLIST, headers=PLAIN).text
            assert served == playlist_text

            runs = {
                "memory": (memory.base, paths),
                "redis": (shared.base, paths),
                "nginx": (nginx_base, paths),
                "playlist": (memory.base, [PLAYLIST]),
                "playlist_ref": (nginx_base, [PLAYLIST]),
            }
            for base, targets in runs.values():  # warm-up: connections, page cache, allocators
                wrk(base, targets, 2, args.connections, work)
            before = {"memory": scrape(memory), "redis": scrape(shared)}
            # Alternate the servers and keep each one's median trial, so a noisy moment on a
            # shared machine cannot favour any of them.
            trials: dict[str, list[dict[str, float]]] = {key: [] for key in runs}
            for _ in range(args.trials):
                for key, (base, targets) in runs.items():
                    trials[key].append(wrk(base, targets, args.seconds, args.connections, work))
            after = {"memory": scrape(memory), "redis": scrape(shared)}
            # The Redis client alone, on the largest segment as stored by the gateway.
            largest = max(bodies, key=len)
            with redis.Redis.from_url(args.redis) as sync:
                sync.set(f"{prefix}client-bench", largest)
            reads = asyncio.run(client_reads(args.redis, f"{prefix}client-bench", args.trials))
        finally:
            for server in servers:
                stop_server(server)
            if nginx is not None:
                stop_process(nginx)
            dropped = drop_prefix(args.redis, prefix)

    checks = {
        tier: check_tier(f"{tier} gateway", before[tier], after[tier], tier, len(paths))
        for tier in ("memory", "redis")
    }
    playlist_hits = metric(
        after["memory"], "clipsync_cache_hits_total", tier="memory", kind="playlist"
    )
    playlist_builds = metric(after["memory"], "clipsync_cache_builds_total", kind="playlist")

    median = {k: sorted(v, key=lambda r: r["rps"])[len(v) // 2] for k, v in trials.items()}
    failed = {k: sum(r["errors"] + r["non2xx"] for r in v) for k, v in trials.items()}
    all_rps = {k: ", ".join(f"{r['rps']:.0f}" for r in v) for k, v in trials.items()}
    segment_mb = expected / len(bodies) / 1e6
    playlist_kb = len(playlist_text.encode()) / 1e3
    labels = {
        "memory": ("ClipSync warm segments, memory tier, 1 granian worker", "seg/s", segment_mb),
        "redis": ("ClipSync warm segments, Redis tier, 1 granian worker", "seg/s", segment_mb),
        "nginx": ("static nginx, 1 worker, same segment bytes (reference)", "seg/s", segment_mb),
        "playlist": ("ClipSync cached media playlist, memory tier", "req/s", playlist_kb / 1e3),
        "playlist_ref": (
            "static nginx, same playlist file (reference)",
            "req/s",
            playlist_kb / 1e3,
        ),
    }
    rows = [
        "| measurement | median trial: rate, MB/s, p99 latency | trials; failed requests |",
        "|---|---|---|",
    ]
    for key, (label, unit, size_mb) in labels.items():
        res = median[key]
        rows.append(
            f"| {label} | {res['rps']:.0f} {unit}, {res['rps'] * size_mb:.0f} MB/s, "
            f"p99 {res['p99_ms']:.1f} ms | {all_rps[key]} {unit}; failed: {failed[key]:.0f} |"
        )
    ratio = {
        key: median[key]["rps"] / median[ref]["rps"]
        for key, ref in (("memory", "nginx"), ("redis", "nginx"), ("playlist", "playlist_ref"))
    }
    rows += [
        f"| memory tier / static nginx | {ratio['memory']:.0%} | target: >= 70% |",
        f"| Redis tier / static nginx | {ratio['redis']:.0%} | target: >= 40% |",
        f"| playlist: gateway / static nginx | {ratio['playlist']:.0%} | |",
        f"| /metrics, memory gateway, during the trials | {checks['memory'][0]} | |",
        f"| /metrics, Redis gateway, during the trials | {checks['redis'][0]}; "
        f"{written / 1e6:.1f} MB written to Redis after warming ({expected / 1e6:.1f} MB "
        f"of segments) | |",
        f"| /metrics, memory gateway, playlists (whole run) | hits memory {playlist_hits:.0f}, "
        f"builds {playlist_builds:.0f} (cache.playlist_ttl = 5 s) | |",
    ]
    header = (
        f"Machine: {machine()}; {redis_version()}\n\n"
        f"wrk: 1 thread, {args.connections} connections, {args.seconds} s per trial, "
        f"{args.trials} alternating trials per server, round-robin over the {len(paths)} "
        f"segments ({segment_mb:.2f} MB each) of the 1080p fixture; playlist "
        f"{playlist_kb:.1f} KB, no gzip.\n"
    )
    reads_median = {
        name: sorted(values, key=lambda v: v[1])[len(values) // 2] for name, values in reads.items()
    }
    rows += [
        f"| Redis client alone, {name}: {len(largest) / 1e6:.2f} MB GETs, 8 in flight "
        f"| {rate:.0f} GET/s, {cpu:.2f} ms CPU per GET | trials: "
        + ", ".join(f"{r:.0f} GET/s {c:.2f} ms" for r, c in reads[name])
        + " |"
        for name, (rate, cpu) in reads_median.items()
    ]
    ours_cpu, plain_cpu = (reads_median[n][1] for n in ("cache tier client", "redis-py defaults"))
    rows.append(
        f"| CPU per GET: cache tier client / redis-py defaults | {ours_cpu / plain_cpu:.0%} | "
        "1 MB stream limit and reads against 64 KB / 32 KB |"
    )
    report = header + "\n" + "\n".join(rows) + "\n"
    problems = checks["memory"][1] + checks["redis"][1]
    if written < expected:
        problems.append(f"only {written:.0f} of {expected} segment bytes were written to Redis")
    if problems:
        report += "\nUnexpected:\n\n" + "\n".join(f"- {p}" for p in problems) + "\n"
    OUT.mkdir(exist_ok=True)
    (OUT / "cache.md").write_text(report)
    print(report)
    print(f"(deleted {dropped} Redis keys under {prefix})", file=sys.stderr)
    if problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
