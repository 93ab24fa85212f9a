"""Simulated players on one gateway process, beside static nginx serving the same files.

    .venv/bin/python bench/players.py [--players 500] [--minutes 5] [--steps 1000,2000]

1. A `clipsync serve --workers 1` on a fresh library and SQLite catalog (default cache
   budgets), filled by `loadtests.seed` with --videos generated 720p H.264/AAC videos, each
   waited for until its ladder (720p, 480p, 360p) is ready.
2. The reference: every playlist, init and media segment those players can ask for, fetched
   once from the gateway and written as files, with the catalogue's JSON as a file at
   /api/v1/videos, served by Debian's nginx with one worker.
3. Locust's PlayerUser (loadtests/locustfile.py: ABR, a 30 s buffer, real-time pacing, seeks
   and switches), --players of them for --minutes, against the gateway and then against nginx;
   then each of --steps against the gateway for --step-minutes, to find how many one process
   holds. Each run: failed requests, segment latency percentiles, time to first segment,
   stalls, the gateway's peak RSS (master and worker) and the CPU of the gateway and Locust.

Holding means: 0 failed requests and p99 segment latency <= 600 ms. Needs nginx (Debian's
nginx-light) and the load extra (pip install -e '.[load]').
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.segment import OUT, machine, start_nginx, wait_for
from conf import Settings
from loadtests.player import media, variants
from tests.serving import Server, free_port, run_server, stop_process, stop_server

ROOT = Path(__file__).resolve().parent.parent
EMAIL = "bench-seeder@example.com"
PASSWORD = "plenty of segments 42"  # noqa: S105 - a throwaway bench account
P99_LIMIT_MS = 600.0


def gateway_settings(work: Path) -> Settings:
    library = work / "library"
    library.mkdir()
    raw: dict[str, dict[str, object]] = {
        "storage": {"library": str(library)},
        "catalog": {"url": f"sqlite:///{work}/catalog.sqlite3"},
        "server": {"workers": 1},  # access lines on, as by default
        "auth": {"jwt_secret": "b" * 40, "password_cost": 4, "register_rate": "100/minute"},
    }
    return msgspec.convert(raw, Settings)


def seed(base: str, videos: int, seconds: float) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "loadtests.seed", "--host", base, "--videos", str(videos),
               "--seconds", str(seconds), "--height", "720", "--email", EMAIL,
               "--password", PASSWORD, "--wait", "ready"]  # fmt: skip
    subprocess.run(command, cwd=ROOT, env=env, check=True, stdout=sys.stderr)


def mirror(base: str, folder: Path) -> int:
    """Everything a player may fetch, as files under ``folder``; the bytes mirrored."""
    total = 0
    with httpx.Client(base_url=base, timeout=60, headers={"accept-encoding": "identity"}) as http:

        def keep(url: str) -> str:
            nonlocal total
            r = http.get(url)
            r.raise_for_status()
            target = folder / urlsplit(url).path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(r.content)
            total += len(r.content)
            return r.text if url.endswith(".m3u8") else ""

        listing = http.get("/api/v1/videos?limit=100")
        listing.raise_for_status()
        api = folder / "api" / "v1" / "videos"
        api.parent.mkdir(parents=True, exist_ok=True)
        api.write_bytes(listing.content)
        for video in listing.json()["items"]:
            master_url = f"{base}{video['playback_url']}"
            for variant in variants(keep(master_url), master_url):
                rendition = media(keep(variant.uri), variant.uri)
                for url in ([rendition.init] if rendition.init else []) + [
                    u for _, u in rendition.segments
                ]:
                    keep(url)
    return total


class Sampler:
    """Peak RSS of a process tree and CPU seconds of named processes, sampled twice a second."""

    def __init__(self, root_pid: int) -> None:
        self.root = root_pid
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def tree(self) -> list[int]:
        found, todo = [], [self.root]
        while todo:
            pid = todo.pop()
            found.append(pid)
            try:
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                continue
            todo += [int(c) for c in children]
        return found

    def rss(self) -> int:
        total = 0
        for pid in self.tree():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            except OSError:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.peak_rss = max(self.peak_rss, self.rss())

    def __enter__(self) -> Sampler:
        self.peak_rss = self.rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            pass
    return total


@dataclass
class Run:
    elapsed: float
    requests: int
    failed: int
    rps: float
    segments: int
    p50: float
    p95: float
    p99: float
    ttfs_p50: float
    ttfs_p99: float
    stalls: int
    locust_cpu: float
    rss: int | None = None  # the gateway's peak (None: nginx)
    gateway_cpu: float | None = None

    @property
    def holds(self) -> bool:
        return self.failed == 0 and self.p99 <= P99_LIMIT_MS


def _number(row: dict[str, str], key: str) -> float:
    return float(row.get(key) or 0)


def locust(host: str, users: int, minutes: float, work: Path, name: str) -> Run:
    """One headless Locust run of PlayerUser."""
    prefix = work / name
    command = [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests" / "locustfile.py"),
               "--headless", "--host", host, "-u", str(users), "-r", str(max(1, users // 10)),
               "-t", f"{int(minutes * 60)}s", "--only-summary", "--csv", str(prefix),
               "--tags", "player", "--exit-code-on-error", "0"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    with (work / f"{name}.log").open("wb") as log:
        subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log)
    elapsed = time.monotonic() - started
    with Path(f"{prefix}_stats.csv").open() as handle:
        rows = {(r["Type"], r["Name"]): r for r in csv.DictReader(handle)}
    segment = rows.get(("GET", "segment"), {})
    first = rows.get(("PLAYER", "time to first segment"), {})
    stalls = rows.get(("PLAYER", "stall (media s x1000)"), {})
    total = rows[("", "Aggregated")]
    return Run(
        elapsed=elapsed,
        requests=int(total["Request Count"]),
        failed=int(total["Failure Count"]),
        rps=_number(total, "Requests/s"),
        segments=int(_number(segment, "Request Count")),
        p50=_number(segment, "50%"),
        p95=_number(segment, "95%"),
        p99=_number(segment, "99%"),
        ttfs_p50=_number(first, "50%"),
        ttfs_p99=_number(first, "99%"),
        stalls=int(_number(stalls, "Request Count")),
        locust_cpu=_child_cpu(),
    )


_last_children = 0.0


def _child_cpu() -> float:
    """CPU seconds of the child processes that ended since the last call (Locust)."""
    global _last_children
    usage = os.times()
    now = usage.children_user + usage.children_system
    spent, _last_children = now - _last_children, now
    return spent


def measured(server: Server | None, host: str, users: int, minutes: float, work: Path,
             name: str) -> Run:  # fmt: skip
    if server is None:
        return locust(host, users, minutes, work, name)
    sampler = Sampler(server.process.pid)
    before = cpu_seconds(sampler.tree())
    with sampler:
        result = locust(host, users, minutes, work, name)
    result.rss = sampler.peak_rss
    result.gateway_cpu = cpu_seconds(sampler.tree()) - before
    return result


def row(label: str, users: int, r: Run) -> str:
    rss = f"{r.rss / 2**20:.0f} MB" if r.rss is not None else "-"
    gateway = f"{r.gateway_cpu / r.elapsed:.0%}" if r.gateway_cpu is not None else "-"
    return (
        f"| {label} | {users} | {r.requests} ({r.rps:.0f}/s), failed {r.failed} | "
        f"{r.segments}: p50 {r.p50:.0f} / p95 {r.p95:.0f} / p99 {r.p99:.0f} ms | "
        f"p50 {r.ttfs_p50:.0f} / p99 {r.ttfs_p99:.0f} ms | {r.stalls} | {rss} | "
        f"{gateway} / {r.locust_cpu / r.elapsed:.0%} | {'holds' if r.holds else 'does not hold'} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--players", type=int, default=500)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--steps", default="1000,2000", help="more players to try, comma-separated")
    parser.add_argument("--step-minutes", type=float, default=2.0)
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each video")
    args = parser.parse_args()
    steps = [int(s) for s in args.steps.split(",") if s.strip()]

    results: list[tuple[str, int, Run]] = []
    with tempfile.TemporaryDirectory(prefix="clipsync-players-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)
        settings = gateway_settings(work)
        server = run_server(settings, work / "gateway.log")
        nginx = None
        try:
            print("seeding ...", file=sys.stderr, flush=True)
            seed(server.base, args.videos, args.seconds)
            static = work / "static"
            mirrored = mirror(server.base, static)
            print(f"mirrored {mirrored / 1e6:.0f} MB for nginx", file=sys.stderr, flush=True)
            port = free_port()
            nginx = start_nginx(static, port, work)
            nginx_base = f"http://127.0.0.1:{port}"
            wait_for(nginx_base + "/api/v1/videos", nginx)
            idle_rss = Sampler(server.process.pid).rss()
            _child_cpu()
            gateway = "ClipSync, 1 granian worker"
            reference = "static nginx, 1 worker (reference)"
            players, minutes = args.players, args.minutes
            run = measured(server, server.base, players, minutes, work, "gateway")
            results.append((gateway, players, run))
            results.append(
                (reference, players, measured(None, nginx_base, players, minutes, work, "nginx"))
            )
            for users in steps:
                run = measured(server, server.base, users, args.step_minutes, work, f"gw-{users}")
                results.append((gateway, users, run))
        finally:
            stop_server(server)
            if nginx is not None:
                stop_process(nginx)

    budget = settings.cache
    budgets = budget.index_budget_mb + budget.playlist_budget_mb + budget.segment_budget_mb
    held = [users for label, users, r in results if label.startswith("ClipSync") and r.holds]
    tried = [users for label, users, _ in results if label.startswith("ClipSync")]
    lines = [
        f"Machine: {machine()}",
        "",
        f"{args.videos} videos of {args.seconds:.0f} s (720p source; ladder 720p/480p/360p), "
        f"Locust PlayerUser at real time (30 s buffer, ABR, seeks and switches), spawned at a "
        f"tenth of the players per second; the first two rows run {args.minutes:g} min each, "
        f"the steps {args.step_minutes:g} min. Locust runs on the same machine.",
        "",
        "| server | players | requests, failed | segments: latency | time to first segment "
        "| stalls | gateway peak RSS | CPU: gateway / Locust | p99 <= 600 ms, 0 failed |",
        "|---|---|---|---|---|---|---|---|---|",
        *(row(label, users, r) for label, users, r in results),
        "",
        f"Gateway RSS before the load: {idle_rss / 2**20:.0f} MB; configured cache budgets "
        f"{budgets:.0f} MB (index {budget.index_budget_mb:g}, playlists "
        f"{budget.playlist_budget_mb:g}, segments {budget.segment_budget_mb:g}).",
        f"Most players one gateway process held here: {max(held) if held else 'none'} "
        f"(of {', '.join(map(str, tried))} tried).",
    ]
    report = "\n".join(lines) + "\n"
    OUT.mkdir(exist_ok=True)
    (OUT / "players.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
