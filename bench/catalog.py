"""Catalog API latency under load, PostgreSQL and SQLite, beside the same queries made directly.

    .venv/bin/python bench/catalog.py [--seconds 5] [--trials 3] [--clients 100]

Prints a markdown table (and writes it to bench/out/catalog.md):

* for each database, one granian worker (``clipsync serve --workers 1``) loaded by 100
  concurrent anonymous clients (aiohttp, one keep-alive connection each) for three alternating
  trials of 5 s per operation: ``GET /api/v1/videos/{id}`` (get), ``GET /api/v1/videos?sort=
  newest|most_viewed&limit=20`` following ``next_cursor`` for some of them (list), and
  ``GET /api/v1/search?q=<1-2 words>&limit=20`` (search): p50, p95, p99, requests/s and
  errors (any answer but 200) of the median trial;
* as the reference, the very same ``Catalog`` calls from one asyncio loop in this process
  (100 concurrent tasks, an engine made as the gateway's, pool_size 10), no HTTP: p50, p95, calls/s;
* the same HTTP requests from one client at a time (``--light-clients``): nothing queues.

The fixture is seeded once per run with SQLAlchemy Core bulk inserts, not through the API:
100,000 videos of 1,000 users with titles, descriptions and tags from a 2,000-word vocabulary
of generated words (Zipf-like frequencies). PostgreSQL: the database ``clipsync_bench`` is
dropped and created (and dropped at the end); SQLite: ``bench/out/catalog.sqlite3``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import math
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import asyncpg
import msgspec
from sqlalchemy import insert, text, tuple_
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backends.catalog import Catalog, engines, schema, upgrade
from backends.catalog import search as catalog_search
from backends.catalog.records import new_id
from backends.catalog.store import PLAYABLE
from conf import Settings
from tests.serving import Server, run_server, stop_server

OUT = Path(__file__).resolve().parent / "out"
SQLITE_FILE = OUT / "catalog.sqlite3"
DATABASE = "clipsync_bench"
# Enables the signed-in API, as deployed; the load itself is anonymous.
SECRET = "clipsync-bench-secret-0123456789abcdef"  # noqa: S105 - a throwaway local key
TARGETS = {"get": 20.0, "list": 20.0, "search": 50.0}  # PostgreSQL p95, ms (the issue's)
OPERATIONS = ("get", "list", "search")
CHUNK = 5_000

# Fixture -------------------------------------------------------------------------------------


@dataclass
class Fixture:
    users: list[dict[str, Any]]
    videos: list[dict[str, Any]]
    tags: list[dict[str, str]]
    renditions: list[dict[str, Any]]
    get_ids: list[str]  # public and ready
    queries: list[str]
    vocabulary: list[str]


def vocabulary(rng: random.Random, size: int) -> list[str]:
    """Pronounceable made-up words: neither engine's stop-word list or dictionary applies."""
    onsets = [*"bcdfghklmnprstvz", "br", "ch", "dr", "gr", "kl", "pl", "sh", "st", "tr"]
    vowels = [*"aeiou", "ai", "ea", "io", "ou"]
    codas = ["", "", "", "n", "r", "l", "s", "m", "k"]
    words: set[str] = set()
    while len(words) < size:
        syllables = rng.choice((2, 2, 3, 3, 4))
        word = "".join(rng.choice(onsets) + rng.choice(vowels) for _ in range(syllables))
        words.add(word + rng.choice(codas))
    ordered = sorted(words)
    rng.shuffle(ordered)  # a word's rank is its frequency rank
    return ordered


def zipf_cum_weights(size: int, offset: float = 10.0) -> list[float]:
    """Zipf-Mandelbrot, weight of rank r ~ 1 / (r + offset): a heavy head, a long tail."""
    return list(itertools.accumulate(1.0 / (rank + offset) for rank in range(1, size + 1)))


def build_fixture(n_videos: int, n_users: int, n_words: int, seed: int) -> Fixture:
    rng = random.Random(seed)
    words = vocabulary(rng, n_words)
    cum = zipf_cum_weights(n_words)
    now = datetime.now(UTC).replace(microsecond=0)

    def pick(k: int) -> list[str]:
        return rng.choices(words, cum_weights=cum, k=k)

    users = []
    for i in range(n_users):
        created = now - timedelta(days=400 + rng.random() * 600)
        users.append(
            {
                "id": new_id(),
                "email": f"user{i}@bench.example",
                "password_hash": None,
                "role": "user",
                "disabled": False,
                "created_at": created,
                "updated_at": created,
            }
        )
    owner_weights = zipf_cum_weights(n_users, offset=20.0)  # a few owners upload a lot
    # Views: Zipf-like over a random popularity rank; the most viewed has about 5 million.
    ranks = list(range(1, n_videos + 1))
    rng.shuffle(ranks)
    ladder = [("1080p", 5_000_000, 1920, 1080), ("720p", 2_800_000, 1280, 720)]
    ladder += [("480p", 1_400_000, 854, 480), ("360p", 800_000, 640, 360)]
    videos, tags, renditions, get_ids = [], [], [], []
    for i in range(n_videos):
        video_id = new_id()
        title_words = pick(rng.randint(3, 8))
        title = " ".join(title_words).capitalize()
        text_words = pick(rng.randint(20, 60))
        sentences, j = [], 0
        while j < len(text_words):
            n = rng.randint(6, 14)
            sentences.append(" ".join(text_words[j : j + n]).capitalize() + ".")
            j += n
        video_tags: list[str] = []
        wanted = rng.randint(2, 6)
        while len(video_tags) < wanted:
            tag = pick(1)[0]
            if tag not in video_tags:
                video_tags.append(tag)
        shown = [t.capitalize() if rng.random() < 0.2 else t for t in video_tags]
        roll = rng.random()
        privacy = "public" if roll < 0.9 else "unlisted" if roll < 0.95 else "private"
        roll = rng.random()
        status = (
            "ready"
            if roll < 0.9
            else "playable"
            if roll < 0.94
            else "processing"
            if roll < 0.96
            else "uploading"
            if roll < 0.98
            else "failed"
        )
        created = now - timedelta(seconds=rng.random() * 365 * 86_400)
        views = int(5_000_000 / ranks[i] ** 1.05)
        plays = status in ("ready", "playable")
        duration = rng.randint(15_000, 1_800_000) if plays else None
        height = rng.choice((360, 480, 720, 1080, 1080)) if plays else None
        videos.append(
            {
                "id": video_id,
                "owner_id": rng.choices(users, cum_weights=owner_weights)[0]["id"],
                "title": title[:200],
                "description": " ".join(sentences),
                "tags": shown,
                "tags_text": " ".join(shown),
                "privacy": privacy,
                "status": status,
                "failure_reason": "the upload is not a video" if status == "failed" else None,
                "duration_ms": duration,
                "width": height * 16 // 9 if height else None,
                "height": height,
                "original_path": f"videos/{video_id}/original.mp4" if plays else None,
                "original_size": rng.randint(2_000_000, 2_000_000_000) if plays else None,
                "original_md5": f"{rng.getrandbits(128):032x}" if plays else None,
                "views": views,
                "likes": views // rng.randint(20, 200),
                "comments": views // rng.randint(200, 5000),
                "created_at": created,
                "updated_at": created + timedelta(seconds=rng.randint(0, 3600)),
            }
        )
        tags += [{"video_id": video_id, "tag": t.casefold()} for t in shown]
        if plays:
            renditions += [
                {
                    "video_id": video_id,
                    "name": name,
                    "path": f"videos/{video_id}/{name}.mp4",
                    "bandwidth": bandwidth,
                    "width": width,
                    "height": h,
                }
                for name, bandwidth, width, h in ladder
                if h <= (height or 0)
            ]
        if privacy == "public" and status == "ready":
            get_ids.append(video_id)
    queries = [" ".join(dict.fromkeys(pick(rng.choice((1, 2))))) for _ in range(2_000)]
    return Fixture(users, videos, tags, renditions, get_ids, queries, words)


# Seeding -------------------------------------------------------------------------------------


def chunks(rows: list[dict[str, Any]], size: int = CHUNK) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


async def seed(url: str, fixture: Fixture) -> float:
    """Schema (Alembic) and rows; returns the seconds it took."""
    start = time.perf_counter()
    engine = engines.create(url)
    try:
        await upgrade(engine)
        tables = (
            (schema.users, fixture.users),
            (schema.videos, fixture.videos),
            (schema.video_tags, fixture.tags),
            (schema.renditions, fixture.renditions),
        )
        for table, rows in tables:
            async with engine.begin() as conn:
                for part in chunks(rows):
                    await conn.execute(insert(table), part)
        if engine.dialect.name == "postgresql":
            async with engine.connect() as conn:
                auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
                await auto.execute(text("VACUUM ANALYZE"))
        else:
            async with engine.begin() as conn:
                await conn.execute(text("ANALYZE"))
                await conn.execute(text("PRAGMA optimize"))
            async with engine.connect() as conn:
                await conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
    finally:
        await engine.dispose()
    return time.perf_counter() - start


def postgres_url(base: str, database: str) -> str:
    return make_url(base).set(database=database).render_as_string(hide_password=False)


def asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def recreate_database(base: str, drop_only: bool = False) -> str:
    conn = await asyncpg.connect(asyncpg_dsn(postgres_url(base, "postgres")))
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        if not drop_only:
            await conn.execute(f"CREATE DATABASE {DATABASE}")
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


def remove_sqlite() -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{SQLITE_FILE}{suffix}").unlink(missing_ok=True)


# Load ----------------------------------------------------------------------------------------

Call = Callable[[], Awaitable[str | None]]  # one request; an error description or None


@dataclass
class Trial:
    latencies: list[float] = field(default_factory=list)  # seconds, every request
    errors: int = 0
    samples: list[str] = field(default_factory=list)  # the first few errors, described
    seconds: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)  # % of one core

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        if not ordered:
            return math.nan
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)] * 1e3


async def drive(
    make_call: Callable[[int], Call], clients: int, seconds: float, think: float = 0.0
) -> Trial:
    """``clients`` loops, each making one call after another until ``seconds`` have passed;
    with ``think``, each waits a uniformly random 0.5-1.5 x ``think`` seconds between calls
    (Locust's ``between``), as apps and people do."""
    trial = Trial()
    deadline = time.perf_counter() + seconds

    async def client(k: int) -> None:
        call = make_call(k)
        pause = random.Random(k)
        if think:  # spread the first calls over one think time
            await asyncio.sleep(pause.uniform(0, think))
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            try:
                problem = await call()
            except Exception as exc:  # every failure is counted, none stops the load
                problem = f"{type(exc).__name__}: {exc}"[:300]
            trial.latencies.append(time.perf_counter() - start)
            if problem is not None:
                trial.errors += 1
                if len(trial.samples) < 5:
                    trial.samples.append(
                        f"{problem} ({(time.perf_counter() - start) * 1e3:.0f} ms)"
                    )
            if think:
                wait = pause.uniform(0.5 * think, 1.5 * think)
                await asyncio.sleep(min(wait, max(0.0, deadline - time.perf_counter())))

    begin = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(clients)))
    trial.seconds = time.perf_counter() - begin
    return trial


class CursorPage(msgspec.Struct):
    next_cursor: str | None = None


class VideoId(msgspec.Struct):
    id: str


def pages(rng: random.Random) -> int:
    """How many pages a listing visit reads: the first, then each next with probability 0.5."""
    n = 1
    while n < 5 and rng.random() < 0.5:
        n += 1
    return n


def http_calls(
    session: aiohttp.ClientSession, base: str, fixture: Fixture, op: str
) -> Callable[[int], Call]:
    def make(k: int) -> Call:
        rng = random.Random(f"{op}-{k}")
        state: dict[str, Any] = {"left": 0, "cursor": None, "sort": "newest"}

        async def fetch(path: str) -> tuple[str | None, bytes]:
            async with session.get(base + path) as response:
                body = await response.read()
                if response.status != 200:
                    return f"GET {path}: {response.status} {body[:200]!r}", body
                return None, body

        async def get() -> str | None:
            return (await fetch(f"/api/v1/videos/{rng.choice(fixture.get_ids)}"))[0]

        async def listing() -> str | None:
            if state["left"] == 0:
                state.update(left=pages(rng), cursor=None)
                state["sort"] = rng.choice(("newest", "most_viewed"))
            path = f"/api/v1/videos?sort={state['sort']}&limit=20"
            if state["cursor"]:
                path += f"&cursor={state['cursor']}"
            problem, body = await fetch(path)
            state["left"] -= 1
            state["cursor"] = None if problem else msgspec.json.decode(body, type=CursorPage)
            state["cursor"] = state["cursor"] and state["cursor"].next_cursor
            if state["cursor"] is None:
                state["left"] = 0
            return problem

        async def find() -> str | None:
            q = quote(rng.choice(fixture.queries))
            return (await fetch(f"/api/v1/search?q={q}&limit=20"))[0]

        return {"get": get, "list": listing, "search": find}[op]

    return make


def direct_calls(catalog: Catalog, fixture: Fixture, op: str) -> Callable[[int], Call]:
    """The same work as the HTTP requests, as the gateway's handlers ask the catalog for it."""

    def make(k: int) -> Call:
        rng = random.Random(f"{op}-{k}")
        state: dict[str, Any] = {"left": 0, "after": None, "sort": "newest"}

        async def get() -> str | None:
            video = await catalog.get_video(rng.choice(fixture.get_ids))
            return None if video is not None else "video not found"

        async def listing() -> str | None:
            if state["left"] == 0:
                state.update(left=pages(rng), after=None)
                state["sort"] = rng.choice(("newest", "most_viewed"))
            _, after = await catalog.list_public(state["sort"], 20, state["after"])
            state["left"] = 0 if after is None else state["left"] - 1
            state["after"] = after
            return None

        async def find() -> str | None:
            # The handler asks for one more than the page, to know whether another follows.
            await catalog_search.search(catalog, rng.choice(fixture.queries), 21, 0)
            return None

        return {"get": get, "list": listing, "search": find}[op]

    return make


# CPU accounting from /proc (Linux) -----------------------------------------------------------

TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_ticks(pid: int) -> int:
    """utime + stime of ``pid`` and its descendants (granian's worker is a child process)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total = int(fields[11]) + int(fields[12])
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += process_ticks(int(child))
    except (OSError, IndexError, ValueError):
        return 0
    return total


def postgres_ticks() -> dict[int, int]:
    """CPU ticks of every PostgreSQL process, by pid (backends come and go with connections)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if (entry / "comm").read_text().strip() == "postgres":
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                    found[int(entry.name)] = int(fields[11]) + int(fields[12])
    return found


def machine_ticks() -> int:
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(values) - values[3] - values[4]  # all but idle and iowait


async def measured(
    make_call: Callable[[int], Call],
    clients: int,
    seconds: float,
    server_pid: int | None,
    think: float = 0.0,
) -> Trial:
    before = (
        process_ticks(server_pid) if server_pid else 0,
        time.process_time(),
        postgres_ticks(),
        machine_ticks(),
    )
    trial = await drive(make_call, clients, seconds, think)
    after = (
        process_ticks(server_pid) if server_pid else 0,
        time.process_time(),
        postgres_ticks(),
        machine_ticks(),
    )
    wall = trial.seconds
    trial.cpu = {
        "gateway": (after[0] - before[0]) / TICK / wall * 100,
        "bench": (after[1] - before[1]) / wall * 100,
        # Processes that exited during the trial are missed (their last ticks are unknown).
        "postgres": sum(t - before[2].get(p, 0) for p, t in after[2].items()) / TICK / wall * 100,
        "machine": (after[3] - before[3]) / TICK / wall * 100,
    }
    return trial


async def alternate(
    makers: dict[str, Callable[[int], Call]],
    clients: int,
    seconds: float,
    trials: int,
    warmup: float,
    server_pid: int | None,
) -> dict[str, list[Trial]]:
    """A warm-up, then ``trials`` rounds of every operation in turn."""
    for make in makers.values():
        await drive(make, clients, warmup)
    results: dict[str, list[Trial]] = {op: [] for op in makers}
    for _ in range(trials):
        for op, make in makers.items():
            results[op].append(await measured(make, clients, seconds, server_pid))
    return results


async def http_load(
    server: Server, fixture: Fixture, args: argparse.Namespace
) -> tuple[dict[str, list[Trial]], dict[str, Trial], dict[str, Trial]]:
    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=args.clients, limit_per_host=args.clients)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await sanity(session, server.base, fixture)
        makers = {op: http_calls(session, server.base, fixture, op) for op in OPERATIONS}
        pid = server.process.pid
        heavy = await alternate(makers, args.clients, args.seconds, args.trials, 2.0, pid)
        paced = {
            op: await measured(make, args.clients, args.paced_seconds, pid, think=args.think)
            for op, make in makers.items()
        }
        light = {
            op: await measured(make, args.light_clients, args.light_seconds, pid)
            for op, make in makers.items()
        }
    return heavy, paced, light


async def sanity(session: aiohttp.ClientSession, base: str, fixture: Fixture) -> None:
    """One request of each kind, checked by hand before any load."""
    video_id = fixture.get_ids[0]
    async with session.get(f"{base}/api/v1/videos/{video_id}") as response:
        assert response.status == 200, await response.text()
        assert msgspec.json.decode(await response.read(), type=VideoId).id == video_id
    for sort in ("newest", "most_viewed"):
        async with session.get(f"{base}/api/v1/videos?sort={sort}&limit=20") as response:
            assert response.status == 200, await response.text()
            page = msgspec.json.decode(await response.read())
            assert len(page["items"]) == 20, page
            assert page["next_cursor"], page
        path = f"/api/v1/videos?sort={sort}&limit=20&cursor={page['next_cursor']}"
        async with session.get(base + path) as response:
            assert response.status == 200, await response.text()
    q = quote(fixture.vocabulary[0])
    async with session.get(f"{base}/api/v1/search?q={q}&limit=20") as response:
        assert response.status == 200, await response.text()
        assert len(msgspec.json.decode(await response.read())["items"]) == 20


async def direct_load(url: str, fixture: Fixture, args: argparse.Namespace) -> dict[str, Trial]:
    catalog = Catalog(engines.create(url, pool_size=10))
    try:
        makers = {op: direct_calls(catalog, fixture, op) for op in OPERATIONS}
        results = await alternate(makers, args.clients, args.direct_seconds, args.trials, 1.0, None)
    finally:
        await catalog.close()
    return {op: median_trial(trials) for op, trials in results.items()}


def median_trial(trials: list[Trial]) -> Trial:
    return sorted(trials, key=lambda t: t.rate)[len(trials) // 2]


# Query facts, for the notes under the table ---------------------------------------------------


def match_counts(fixture: Fixture) -> list[int]:
    """Public playable videos matching each distinct query (SQLite FTS5, the same words)."""
    db = sqlite3.connect(SQLITE_FILE)
    try:
        counts = []
        for q in dict.fromkeys(fixture.queries):
            match = " ".join(f'"{w}"' for w in catalog_search.words(q))
            counts.append(
                db.execute(
                    "SELECT count(*) FROM videos_fts JOIN videos v ON v.rowid = videos_fts.rowid "
                    "WHERE videos_fts MATCH ? AND v.privacy = 'public' "
                    "AND v.status IN ('playable', 'ready')",
                    (match,),
                ).fetchone()[0]
            )
        return counts
    finally:
        db.close()


async def explain(name: str, url: str, fixture: Fixture) -> str:
    """Plans and single-query times of the search and listing SQL the gateway runs: EXPLAIN
    (ANALYZE, BUFFERS) on PostgreSQL, EXPLAIN QUERY PLAN on SQLite."""
    catalog = Catalog(engines.create(url))
    sqlite = catalog.engine.dialect.name == "sqlite"
    cases: list[tuple[str, str, dict[str, Any]]] = []
    for label, word in (
        ("the most frequent word", fixture.vocabulary[0]),
        ("a median word", fixture.vocabulary[len(fixture.vocabulary) // 2]),
    ):
        q = f'"{word}"' if sqlite else word
        sql = catalog_search._SQLITE if sqlite else catalog_search._POSTGRES
        cases.append((f"search q={word!r} ({label})", sql, {"q": q, "limit": 21, "offset": 0}))
    v = schema.videos
    where = (v.c.privacy == "public") & v.c.status.in_(PLAYABLE)
    for sort in ("newest", "most_viewed"):
        _, after = await catalog.list_public(sort, 20)
        for page, position in ((1, None), (2, after)):
            # The very statement Catalog.list_public runs (one row more than the page).
            query, key = catalog._listing(where, sort)
            if position is not None:
                query = query.where(tuple_(*key) < tuple_(*position))
            compiled = query.limit(21).compile(
                dialect=catalog.engine.dialect, compile_kwargs={"literal_binds": True}
            )
            cases.append((f"list sort={sort}, page {page}", str(compiled), {}))
    out = [f"==== {name}"]
    try:
        async with catalog.engine.connect() as conn:
            for label, sql, params in cases:
                times = []
                for _ in range(5):
                    start = time.perf_counter()
                    (await conn.execute(text(sql), params)).all()
                    times.append(time.perf_counter() - start)
                out.append(f"-- {label}: {statistics.median(times) * 1e3:.2f} ms (median of 5)")
                how = "EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN (ANALYZE, BUFFERS) "
                plan = await conn.execute(text(how + sql), params)
                out += [f"   {row[-1] if sqlite else row[0]}" for row in plan]
    finally:
        await catalog.close()
    return "\n".join(out) + "\n"


# Report --------------------------------------------------------------------------------------


def machine(pg_version: str) -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import granian

    return (
        f"{cpu}, {os.cpu_count()} cores; Python {platform.python_version()}, granian "
        f"{granian.__version__}, aiohttp {aiohttp.__version__}; PostgreSQL {pg_version} "
        f"(default configuration); SQLite {sqlite3.sqlite_version}"
    )


def ms(value: float) -> str:
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def report(
    args: argparse.Namespace,
    pg_version: str,
    fixture: Fixture,
    seeded: dict[str, float],
    results: dict[str, dict[str, Any]],
    counts: list[int],
) -> tuple[str, list[str]]:
    light_clients = f"{args.light_clients} client" + ("s" if args.light_clients != 1 else "")
    think = f"{0.5 * args.think:g}-{1.5 * args.think:g} s"
    rows = [
        "| database | operation | HTTP, 100 clients, no pause: p50 / p95 / p99 | req/s (trials) "
        f"| HTTP, 100 clients pausing {think}: p50 / p95 / p99, req/s | errors "
        "| direct, 100 tasks: p50 / p95, calls/s | HTTP, "
        f"{light_clients}: p50 / p95, req/s | target (p95): no pause; pausing |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows[0] = rows[0].replace("100", str(args.clients))
    problems: list[str] = []
    for name, found in results.items():
        for op in OPERATIONS:
            trials: list[Trial] = found["http"][op]
            best = median_trial(trials)
            errors = sum(t.errors for t in trials)
            paced: Trial = found["paced"][op]
            errors += paced.errors
            direct: Trial = found["direct"][op]
            light: Trial = found["light"][op]
            if name == "PostgreSQL":
                target = TARGETS[op]
                goal = f"<= {target:.0f} ms: " + "; ".join(
                    f"**{'met' if t.pct(0.95) <= target else 'not met'}** ({ms(t.pct(0.95))} ms)"
                    for t in (best, paced)
                )
            else:
                goal = ""
            rows.append(
                f"| {name} | {op} | {ms(best.pct(0.5))} / {ms(best.pct(0.95))} / "
                f"{ms(best.pct(0.99))} ms | {best.rate:.0f} "
                f"({', '.join(f'{t.rate:.0f}' for t in trials)}) | "
                f"{ms(paced.pct(0.5))} / {ms(paced.pct(0.95))} / {ms(paced.pct(0.99))} ms, "
                f"{paced.rate:.0f}/s | {errors} | "
                f"{ms(direct.pct(0.5))} / {ms(direct.pct(0.95))} ms, {direct.rate:.0f}/s | "
                f"{ms(light.pct(0.5))} / {ms(light.pct(0.95))} ms, {light.rate:.0f}/s | {goal} |"
            )
            for label, trial_list in (
                ("HTTP", trials),
                ("HTTP paced", [paced]),
                ("direct", [direct]),
                ("HTTP light", [light]),
            ):
                for t in trial_list:
                    for sample in t.samples:
                        problems.append(f"{name} {op} {label}: {sample}")
                bad = sum(t.errors for t in trial_list)
                if bad:
                    problems.append(f"{name} {op} {label}: {bad} errors in all")
    cpu_rows = [
        "| database | operation | gateway | this process (client) | PostgreSQL | whole machine |",
        "|---|---|---|---|---|---|",
    ]
    for name, found in results.items():
        for op in OPERATIONS:
            c = median_trial(found["http"][op]).cpu
            pg = f"{c['postgres']:.0f}%" if name == "PostgreSQL" else "-"
            cpu_rows.append(
                f"| {name} | {op} | {c['gateway']:.0f}% | {c['bench']:.0f}% | {pg} | "
                f"{c['machine']:.0f}% of {os.cpu_count() * 100}% |"
            )
    ordered = sorted(counts)
    public_ready = len(fixture.get_ids)
    header = (
        f"Machine: {machine(pg_version)}\n\n"
        f"Fixture: {len(fixture.videos):,} videos ({public_ready:,} public and ready), "
        f"{len(fixture.users):,} users, {len(fixture.tags):,} tags, "
        f"{len(fixture.renditions):,} renditions; seeded in "
        + ", ".join(f"{k} {v:.0f} s" for k, v in seeded.items())
        + f". Search: {len(fixture.queries):,} queries of 1-2 words drawn like the text "
        f"({len(counts)} distinct); public playable videos matching a query: median "
        f"{statistics.median(ordered):.0f}, p90 {ordered[int(0.9 * (len(ordered) - 1))]:,}, "
        f"max {ordered[-1]:,}.\n\n"
        f"Load: one granian worker; {args.clients} aiohttp clients (keep-alive) per operation, "
        f"{args.trials} alternating trials of {args.seconds:g} s after a 2 s warm-up, the "
        f"median trial (by req/s) shown; paced: the same {args.clients} clients, each pausing "
        f"{think} (uniform, as Locust's `between`) after every answer, one "
        f"{args.paced_seconds:g} s trial per operation; direct: the same Catalog calls from "
        f"{args.clients} "
        f"asyncio tasks in one process (engine pool_size 10), {args.trials} trials of "
        f"{args.direct_seconds:g} s; light: {light_clients} for "
        f"{args.light_seconds:g} s.\n"
    )
    text_out = (
        header
        + "\n"
        + "\n".join(rows)
        + "\n\nCPU during the median HTTP trial (% of one core; PostgreSQL: its long-lived "
        "processes, parallel query workers exit before they are counted, the whole machine "
        "includes them):\n\n" + "\n".join(cpu_rows) + "\n"
    )
    return text_out, problems


# Main ----------------------------------------------------------------------------------------


def settings(url: str, library: Path) -> Settings:
    return msgspec.convert(
        {
            "storage": {"library": str(library)},
            "server": {"workers": 1},
            "catalog": {"url": url},
            "auth": {"jwt_secret": SECRET},
        },
        Settings,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5, help="HTTP trial length")
    parser.add_argument("--direct-seconds", type=float, default=3, help="direct trial length")
    parser.add_argument("--trials", type=int, default=3, help="alternating trials per operation")
    parser.add_argument("--clients", type=int, default=100, help="concurrent clients")
    parser.add_argument(
        "--think", type=float, default=1.0, help="mean think time of the paced run, seconds"
    )
    parser.add_argument("--paced-seconds", type=float, default=10, help="paced run length")
    parser.add_argument("--light-clients", type=int, default=1, help="clients of the light run")
    parser.add_argument("--light-seconds", type=float, default=4, help="light run length")
    parser.add_argument("--videos", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument(
        "--postgres", default="postgresql://postgres@127.0.0.1:5432", help="server URL"
    )
    parser.add_argument("--keep", action="store_true", help="keep both databases afterwards")
    args = parser.parse_args()

    OUT.mkdir(exist_ok=True)
    print("building the fixture ...", file=sys.stderr, flush=True)
    fixture = build_fixture(args.videos, args.users, 2_000, seed=20_240_601)
    pg_url = postgres_url(args.postgres, DATABASE)
    sqlite_url = f"sqlite:///{SQLITE_FILE}"
    databases = {"PostgreSQL": pg_url, "SQLite": sqlite_url}
    seeded: dict[str, float] = {}
    results: dict[str, dict[str, Any]] = {}
    explained: list[str] = []
    pg_version = asyncio.run(recreate_database(args.postgres))
    remove_sqlite()
    try:
        with tempfile.TemporaryDirectory(prefix="clipsync-bench-") as tmp:
            library = Path(tmp) / "library"
            library.mkdir()
            for name, url in databases.items():
                print(f"seeding {name} ...", file=sys.stderr, flush=True)
                seeded[name] = asyncio.run(seed(url, fixture))
                print(f"  {seeded[name]:.0f} s; direct calls ...", file=sys.stderr, flush=True)
                direct = asyncio.run(direct_load(url, fixture, args))
                print("  HTTP ...", file=sys.stderr, flush=True)
                server = run_server(settings(url, library), Path(tmp) / f"{name}.log")
                try:
                    heavy, paced, light = asyncio.run(http_load(server, fixture, args))
                finally:
                    stop_server(server)
                results[name] = {"http": heavy, "paced": paced, "direct": direct, "light": light}
                explained.append(asyncio.run(explain(name, url, fixture)))
            counts = match_counts(fixture)
    finally:
        if not args.keep:
            asyncio.run(recreate_database(args.postgres, drop_only=True))
            remove_sqlite()

    table, problems = report(args, pg_version, fixture, seeded, results, counts)
    if problems:
        table += "\nUnexpected:\n\n" + "\n".join(f"- {p}" for p in problems) + "\n"
    (OUT / "catalog.md").write_text(table)
    (OUT / "catalog-explain.txt").write_text("\n".join(explained))
    print(table)
    print(f"(query plans of search and list: {OUT / 'catalog-explain.txt'})")
    if problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
