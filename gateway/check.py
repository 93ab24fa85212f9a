"""``clipsync check``: the settings exactly as ``serve`` loads them, every configured component
probed (the probes of ``/readyz``, ``gateway.health``), and the settings that would only fail
later: accounts, playback signing, where processing jobs run, mail.

Exit 0: everything answers; 1: something failed (one line each, with the reason and a hint);
2: the settings cannot be used (which setting, and what is wrong).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

import msgspec
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from auth import notify
from auth.playback import from_settings as playback_signer
from auth.ratelimit import parse_rule
from auth.tokens import from_settings as access_tokens
from backends import tracing
from backends.blocking import BlockingRunner
from backends.cache import RedisURLError, TieredCache, open_cache
from backends.cache.redis_tier import parse_url as parse_redis_url
from backends.catalog import engines, schema
from backends.errors import MediaNotFound
from backends.jobs import JobQueue, StreamQueue, open_queue, queue_url
from backends.storage import Storage, display_url, open_storage
from conf import Settings, SettingsError
from gateway import health
from gateway.health import PROBE_TIMEOUT, Probe, Result, not_configured
from gateway.notices import DATA
from gateway.proxies import parse_trusted

EXIT_OK, EXIT_FAILED, EXIT_SETTINGS = 0, 1, 2
# The encoders processing needs from PyAV's FFmpeg: the ladder's video and audio, thumbnails.
ENCODERS = ("libx264", "aac", "mjpeg")
RATE_RULES = ("login_rate", "register_rate", "reset_rate", "reset_account_rate")


def settings_problems(settings: Settings) -> list[str]:
    """What ``serve`` (or its workers, at start-up) would refuse, each naming its setting."""
    problems: list[str] = []
    try:
        open_storage(settings.storage, BlockingRunner(1))  # contacts nothing
    except MediaNotFound:
        pass  # a local folder that is not there: the storage line's failure
    except ValueError as exc:
        problems.append(f"storage.library: {exc}")
    redis_urls = {
        "cache.redis_url": settings.cache.redis_url,
        "jobs.redis_url": settings.jobs.redis_url,
    }
    for setting, url in redis_urls.items():
        if url:
            try:
                parse_redis_url(url)
            except RedisURLError as exc:
                problems.append(f"{setting}: {exc}")
    try:
        queue_url(settings.jobs, settings.cache.redis_url)
    except ValueError as exc:
        problems.append(str(exc))
    try:
        engines.parse(settings.catalog.url)
    except engines.CatalogURLError as exc:
        problems.append(str(exc))
    try:
        access_tokens(settings.auth)  # its messages name the setting
    except ValueError as exc:
        problems.append(str(exc))
    try:
        playback_signer(settings)
    except ValueError as exc:  # "playback key 'k1' must be ...": say which setting holds it
        key = "auth.playback_secret" if settings.auth.playback_secret else "auth.jwt_secret"
        said = str(exc)
        if said.startswith(("auth.", "vod.")):
            problems.append(said)
        elif not any(problem.startswith(key) for problem in problems):  # said once is enough
            problems.append(f"{key}: {said}")
    for rule in RATE_RULES:
        try:
            parse_rule(getattr(settings.auth, rule))
        except ValueError as exc:
            problems.append(f"auth.{rule}: {exc}")
    if settings.mail.smtp_url:
        try:
            notify.parse_smtp_url(settings.mail.smtp_url)
        except ValueError as exc:
            problems.append(f"mail.smtp_url: {exc}")
    try:
        parse_trusted(settings.server.trusted_proxies)
    except ValueError as exc:
        problems.append(f"server.trusted_proxies: {exc}")
    if settings.tracing.enabled and not tracing.available():
        problems.append(tracing.MISSING)
    try:  # the outbox notifier checks the sender alone, whatever smtp_url says
        notify.from_settings(msgspec.structs.replace(settings.mail, smtp_url=""), DATA)
    except ValueError as exc:
        problems.append(f"mail.sender: {exc}")
    return problems


# Checks of settings that only fail later (pure) ----------------------------------------------


def accounts(settings: Settings) -> Result:
    auth = settings.auth
    if access_tokens(auth) is None:
        return not_configured("accounts", "no auth.jwt_secret: the signed-in API answers 401")
    earlier = len(auth.jwt_verify_keys)
    also = f"; {earlier} earlier key(s) still accepted" if earlier else ""
    return Result("accounts", True, detail=f"{auth.jwt_algorithm} tokens, key {auth.jwt_kid}{also}")


def playback(settings: Settings, private_videos: int | None) -> Result:
    """Signed playback URLs; a failure when the catalog holds private videos nobody can play.
    ``private_videos``: None when the catalog could not tell."""
    auth = settings.auth
    if auth.playback_secret or auth.jwt_secret:
        key = "auth.playback_secret" if auth.playback_secret else "auth.jwt_secret"
        return Result("playback", True, detail=f"signed playback URLs with {key}")
    if private_videos:
        return Result(
            "playback",
            False,
            error=f"{private_videos} private video(s) in the catalog cannot be played: "
            "no key signs playback URLs",
            hint="set auth.playback_secret (32 bytes or more) or auth.jwt_secret",
        )
    return not_configured(
        "playback", "no auth.playback_secret or auth.jwt_secret: private videos cannot play"
    )


def processing(settings: Settings, redis_queue: bool, encoders: Collection[str] | None) -> Result:
    """Where uploaded videos get processed, and whether this host's PyAV can transcode them.
    ``encoders``: PyAV's encoders, None when PyAV does not load."""
    workers = settings.jobs.gateway_workers
    if not redis_queue and workers == 0:
        return Result(
            "processing",
            False,
            error="jobs.gateway_workers is 0 and the job queue is in-process: uploaded videos "
            "are never processed",
            hint="set jobs.gateway_workers to 1 or more, or give the queue a Redis "
            "(jobs.redis_url or cache.redis_url) and run `clipsync worker`",
        )
    if encoders is None:
        return Result(
            "processing",
            False,
            error="PyAV does not load: uploads cannot be transcoded",
            hint="reinstall it (`pip install --force-reinstall av`)",
        )
    missing = [name for name in ENCODERS if name not in encoders]
    if missing:
        return Result(
            "processing",
            False,
            error=f"PyAV cannot encode {', '.join(missing)}: uploads would fail to transcode",
            hint="install a PyAV build with these encoders (`pip install --force-reinstall av`)",
        )
    queue = "Redis queue" if redis_queue else "in-process queue"
    runs = f"{workers} job(s) per gateway process" if workers else "jobs run by `clipsync worker`"
    return Result("processing", True, detail=f"{queue}, {runs}; encoders {', '.join(ENCODERS)}")


def mail(settings: Settings) -> Result:
    if settings.mail.smtp_url:
        shown = notify.display(settings.mail.smtp_url)
        return Result("mail", True, target=shown, detail="SMTP (not contacted)")
    folder = Path(settings.mail.outbox) if settings.mail.outbox else DATA / "outbox"
    return not_configured("mail", f"no mail.smtp_url: messages are written to {folder}/")


# Output (pure) --------------------------------------------------------------------------------


def verdict(result: Result) -> str:
    if not result.configured:
        return "not configured"
    return "ok" if result.ok else "FAILED"


def line(result: Result) -> str:
    """One line: name, verdict, target and time, then the detail, or the reason and a hint."""
    where = result.target
    if result.ms is not None:
        where = f"{where} ({result.ms:.1f} ms)".lstrip()
    said = [result.detail] if result.ok else [result.error, result.hint and f"hint: {result.hint}"]
    told = "; ".join(part for part in said if part)
    rest = f"{where}: {told}" if where and told else where or told
    return f"{result.name:<12} {verdict(result):<15} {rest}".rstrip()


def summary(results: Sequence[Result]) -> str:
    failed = [r.name for r in results if not r.ok]
    if not failed:
        return f"clipsync check: all {len(results)} checks passed"
    return f"clipsync check: {len(failed)} of {len(results)} FAILED: {', '.join(failed)}"


# Running ------------------------------------------------------------------------------------


def _encoders() -> frozenset[str] | None:
    try:
        import av
    except ImportError:
        return None
    return frozenset(str(name) for name in av.codecs_available)


def _unborn_catalog(url: str) -> Result | None:
    """An embedded catalog not created yet: `serve` creates it, if its folder lets it (None:
    the file is there, probe it). Probing would create the file, so it is not opened."""
    parsed = engines.parse(url)
    if not parsed.drivername.startswith("sqlite") or not parsed.database:
        return None
    path = Path(parsed.database)
    if path.exists():
        return None
    target = health.shown(url)
    folder = next((p for p in path.absolute().parents if p.exists()), Path("/"))
    if not os.access(folder, os.W_OK | os.X_OK):
        return Result(
            "catalog",
            False,
            target,
            error=f"{path} does not exist and {folder} is not writable",
            hint="make the folder writable for this user, or set catalog.url",
        )
    return Result("catalog", True, target, detail="not created yet: `clipsync serve` creates it")


async def _private_videos(engine: AsyncEngine) -> int | None:
    """How many private videos the catalog holds; None when it cannot tell (the catalog's own
    line says why)."""
    videos = schema.videos
    query = select(func.count()).select_from(videos).where(videos.c.privacy == "private")
    try:
        async with asyncio.timeout(PROBE_TIMEOUT), engine.connect() as conn:
            return int((await conn.execute(query)).scalar_one())
    except Exception:  # down or no schema yet: reported by the catalog probe
        return None


async def inspect(settings: Settings) -> list[Result]:
    """Every check, the component probes at once; everything opened is closed again."""
    secrets = health.secrets_of(settings)
    storage: Storage | None = None
    engine: AsyncEngine | None = None
    cache: TieredCache | None = None
    queue: JobQueue | None = None
    try:
        try:
            storage = open_storage(settings.storage, BlockingRunner(2))
            storage_item: Probe | Result = health.storage_probe(storage)
        except MediaNotFound as exc:  # a local folder that is not there
            storage_item = Result(
                "storage",
                False,
                display_url(settings.storage.library),
                error=str(exc),
                hint="create it, or point storage.library at the library",
            )
        catalog_item: Probe | Result | None = _unborn_catalog(settings.catalog.url)
        if catalog_item is None:
            engine = engines.create(settings.catalog.url, pool_size=2)
            catalog_item = health.catalog_probe(engine, settings.catalog.url, schema=True)
        cache = open_cache(settings.cache)
        queue = open_queue(settings.jobs, settings.cache.redis_url)
        items = [
            storage_item,
            catalog_item,
            health.cache_probe(settings, cache),
            health.queue_probe(settings, queue),
        ]
        results = await health.probe_all(items, secrets)
        private = None
        catalog_ok = any(r.name == "catalog" and r.ok for r in results)
        if engine is not None and catalog_ok and playback_signer(settings) is None:
            private = await _private_videos(engine)
        redis_queue = isinstance(queue, StreamQueue)
        return [
            *results,
            accounts(settings),
            playback(settings, private),
            processing(settings, redis_queue, _encoders()),
            mail(settings),
        ]
    finally:
        for closing in (queue, cache, storage):
            if closing is not None:
                with contextlib.suppress(Exception):
                    await closing.close()
        if engine is not None:
            await engine.dispose()


def _settings_failed(problems: Sequence[str], as_json: bool) -> int:
    if as_json:
        print(json.dumps({"status": "settings_error", "errors": list(problems)}, indent=2))
    else:
        for problem in problems:
            print(f"clipsync check: settings error: {problem}", file=sys.stderr)
    return EXIT_SETTINGS


def main(load: Callable[[], Settings], as_json: bool = False) -> int:
    """``load``: the settings as ``serve`` loads them (same file, environment and flags)."""
    try:
        settings = load()
    except SettingsError as exc:
        return _settings_failed([str(exc)], as_json)
    problems = settings_problems(settings)
    if problems:
        return _settings_failed(problems, as_json)
    results = asyncio.run(inspect(settings))
    failed = any(not r.ok for r in results)
    if as_json:
        body = {
            "status": "failed" if failed else "ok",
            "checks": {r.name: r.as_json() for r in results},
        }
        print(json.dumps(body, indent=2))
    else:
        for result in results:
            print(line(result))
        print(summary(results))
    return EXIT_FAILED if failed else EXIT_OK
