"""``clipsync``: serve the gateway or the demo, run workers, ingest a file, sign URLs, migrate."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import logging.config
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import msgspec
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from auth import playback
from auth.playback import from_settings as playback_signer
from auth.tokens import from_settings as access_tokens
from backends import catalog
from backends.blocking import BlockingRunner
from backends.cache.redis_tier import display as display_redis_url
from backends.errors import ClipSyncError
from backends.storage import display_url, open_storage
from conf import Settings, SettingsError, load
from conf.settings import export
from gateway import logs
from gateway.metrics import prepare_folder

DEMO_ASSET = "demo"


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML settings file (also CLIPSYNC_CONFIG)")
    parser.add_argument("--library", help="folder or storage URL of the media library")
    parser.add_argument("--host", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="listen port (default 8080)")
    parser.add_argument("--workers", type=int, help="granian worker processes (default 1)")
    parser.add_argument("--threads", type=int, help="threads for blocking work per worker")
    parser.add_argument("--segment-format", choices=["fmp4", "ts"], help="default segment format")
    parser.add_argument("--target-duration", type=float, help="target segment duration (s)")
    parser.add_argument("--redis", help="Redis URL of the shared cache tier (default: none)")


def _overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    chosen = {
        ("storage", "library"): args.library,
        ("server", "host"): args.host,
        ("server", "port"): args.port,
        ("server", "workers"): args.workers,
        ("server", "blocking_threads"): args.threads,
        ("vod", "segment_format"): args.segment_format,
        ("vod", "target_duration"): args.target_duration,
        ("cache", "redis_url"): args.redis,
    }
    out: dict[str, dict[str, Any]] = {}
    for (section, key), value in chosen.items():
        if value is not None:
            out.setdefault(section, {})[key] = value
    return out


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="clipsync", description="ClipSync Edge VOD origin")
    commands = root.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gateway")
    _common(serve)
    demo = commands.add_parser(
        "demo", help=f"generate a demo ladder into <library>/{DEMO_ASSET}, then serve it"
    )
    _common(demo)
    demo.add_argument("--duration", type=float, default=20.0, help="demo length in seconds")
    db = commands.add_parser("db", help="the catalog database's schema")
    db.add_argument(
        "action", choices=["upgrade", "status"], help="migrate to the newest schema, or show it"
    )
    db.add_argument("--config", help="TOML settings file (also CLIPSYNC_CONFIG)")
    db.add_argument("--catalog", help="catalog database URL (sqlite:///file or postgresql://...)")
    worker = commands.add_parser("worker", help="take processing jobs from the Redis queue")
    worker.add_argument("--config", help="TOML settings file (also CLIPSYNC_CONFIG)")
    worker.add_argument("--library", help="folder or storage URL of the media library")
    worker.add_argument("--redis", help="Redis URL of the job queue (default cache.redis_url)")
    worker.add_argument("--concurrency", type=int, help="jobs at once (default 1)")
    worker.add_argument("--metrics-port", type=int, help="serve /metrics on this port")
    ingest = commands.add_parser(
        "ingest", help="upload a local file to a gateway and follow its processing"
    )
    ingest.add_argument("file", type=Path, help="the video file")
    ingest.add_argument("--title", help="the video's title (default: the file's name)")
    ingest.add_argument("--privacy", choices=["public", "unlisted", "private"], default="private")
    ingest.add_argument("--to", help="the gateway's URL (default auth.public_url or host:port)")
    ingest.add_argument("--token", help="an access token (also CLIPSYNC_TOKEN)")
    ingest.add_argument("--email", help="sign in as (password: CLIPSYNC_PASSWORD or a prompt)")
    ingest.add_argument("--chunk-mb", type=int, default=8, help="MB per PATCH (default 8)")
    ingest.add_argument("--no-wait", action="store_true", help="stop once uploaded")
    ingest.add_argument("--state", type=Path, help="file remembering uploads to resume")
    ingest.add_argument("--config", help="TOML settings file (also CLIPSYNC_CONFIG)")
    sign = commands.add_parser("sign", help="print a signed playback URL for a library path")
    sign.add_argument("path", help="a file (movies/a.mp4) or a folder (movies/b/) of the library")
    sign.add_argument("--config", help="TOML settings file (also CLIPSYNC_CONFIG)")
    sign.add_argument("--ttl", type=int, help="seconds the URL works (default auth.playback_ttl)")
    sign.add_argument("--cidr", help="only for clients in this network (or one IP address)")
    sign.add_argument("--base", help="URL of the gateway (default http://host:port)")
    check = commands.add_parser(
        "check", help="check the settings as serve loads them and probe every component"
    )
    _common(check)  # the same flags as serve: the same settings
    check.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    return root


def _sign(args: argparse.Namespace, settings: Settings) -> int:
    """``clipsync sign``: the master playlist URL of a path-mode asset, with its token."""
    signer = playback_signer(settings)
    if signer is None:
        raise SettingsError("clipsync sign needs auth.playback_secret or auth.jwt_secret")
    asset = args.path.strip("/")
    try:
        subject = playback.for_path(args.path)
        ttl = args.ttl or settings.auth.playback_ttl
        if ttl <= 0:
            raise ValueError("--ttl must be a positive number of seconds")
        token = signer.sign(subject, int(time.time()) + ttl, args.cidr)
    except (ValueError, ClipSyncError) as exc:
        raise SettingsError(f"cannot sign {args.path!r}: {exc}") from None
    base = args.base or f"http://{settings.server.host}:{settings.server.port}"
    print(f"{base.rstrip('/')}/vod/{quote(asset)}/master.m3u8?token={token}")
    return 0


class CatalogUnreachable(SettingsError):
    """The catalog database did not answer (down, wrong host, refused credentials)."""


def _on_catalog(
    url: str, work: Callable[[AsyncEngine], Awaitable[catalog.SchemaState]]
) -> catalog.SchemaState:
    """Run ``work`` on an engine for ``url`` (a SQLite file's folder made first); every
    failure becomes a SettingsError naming the catalog, its password hidden."""

    async def run() -> catalog.SchemaState:
        catalog.engines.make_folder(url)
        engine = catalog.engines.create(url)
        try:
            return await work(engine)
        finally:
            await engine.dispose()

    where = catalog.engines.display(url)
    try:
        return asyncio.run(run())
    except catalog.CatalogURLError as exc:
        raise SettingsError(str(exc)) from None
    except catalog.CatalogOutdated as exc:
        raise SettingsError(f"catalog {where}: {exc}") from None
    except (OSError, SQLAlchemyError) as exc:
        raise CatalogUnreachable(
            f"catalog {where}: cannot reach it ({type(exc).__name__}); check catalog.url"
        ) from None


def _db(action: str, settings: Settings) -> int:
    url = settings.catalog.url
    work = catalog.upgrade if action == "upgrade" else catalog.state
    try:
        found = _on_catalog(url, work)
    except CatalogUnreachable as exc:
        print(f"clipsync: error: {exc}", file=sys.stderr)
        return 1
    verdict = "up to date" if found.ready else "behind: run `clipsync db upgrade`"
    where = catalog.engines.display(url)
    print(f"catalog {where}: schema {found.current or 'empty'} (newest {found.head}), {verdict}")
    return 0


def generate_demo(folder: Path, duration: float) -> None:
    """Write a three-rendition ladder with aligned 2 s GOPs; skip renditions already there."""
    from fractions import Fraction

    from packager.synth import SynthSpec, write

    ladder = {
        "720p": (1280, 720, 2_400_000),
        "480p": (854, 480, 1_200_000),
        "360p": (640, 360, 700_000),
    }
    for name, (width, height, bitrate) in ladder.items():
        final = folder / f"{name}.mp4"
        if final.exists():
            continue
        spec = SynthSpec(
            duration=duration,
            width=width,
            height=height,
            fps=Fraction(30),
            bitrate=bitrate,
            noise=6,
            faststart=True,
        )
        print(f"generating demo rendition {final} ...", flush=True)
        partial = folder / f".{name}.partial.mp4"
        write(partial, spec)
        partial.replace(final)  # atomic: a half-written demo is never served


def _serve(settings: Settings) -> None:
    from granian import Granian
    from granian.constants import Interfaces

    try:
        open_storage(settings.storage, BlockingRunner(1))
    except (ClipSyncError, ValueError) as exc:
        raise SettingsError(f"storage.library: {exc}") from None
    from gateway.check import settings_problems

    problems = settings_problems(settings)  # what `clipsync check` reports, each named
    if problems:
        raise SettingsError("; ".join(problems))
    cache = "in-process cache"
    if settings.cache.redis_url:
        cache += f" + Redis {display_redis_url(settings.cache.redis_url)}"
    tokens = access_tokens(settings.auth)
    schema = _prepare_catalog(settings.catalog.url)
    # The workers of this run share one metrics folder: a fresh one unless configured.
    own_folder = not settings.server.metrics_dir
    folder = settings.server.metrics_dir or tempfile.mkdtemp(prefix="clipsync-metrics-")
    prepare_folder(folder)
    server = msgspec.structs.replace(settings.server, metrics_dir=folder)
    settings = msgspec.structs.replace(settings, server=server)
    export(settings)  # granian workers load these exact settings
    base = f"http://{server.host}:{server.port}"
    library = display_url(settings.storage.library)
    config = logs.dict_config(server.log_format, server.log_level, server.access_log)
    logging.config.dictConfig(config)  # the banner goes out as the workers' lines will
    log = logging.getLogger("clipsync.serve")
    log.info("ClipSync Edge serving %s on %s (%s)", library, base, cache)
    accounts = "on" if tokens is not None else "off (no auth.jwt_secret)"
    log.info("Catalog %s; signed-in API %s", schema, accounts)
    Granian(
        "gateway.app:factory",
        factory=True,
        interface=Interfaces.ASGI,
        address=server.host,
        port=server.port,
        workers=server.workers,
        log_access=False,  # ours (clipsync.access) has the route, the request id, no query
        log_dictconfig=config,
    ).serve()
    if own_folder:
        shutil.rmtree(folder, ignore_errors=True)


def _worker(args: argparse.Namespace) -> int:
    from gateway import worker

    chosen = {
        ("storage", "library"): args.library,
        ("jobs", "redis_url"): args.redis,
        ("jobs", "worker_concurrency"): args.concurrency,
        ("jobs", "metrics_port"): args.metrics_port,
    }
    overrides: dict[str, dict[str, Any]] = {}
    for (section, key), value in chosen.items():
        if value is not None:
            overrides.setdefault(section, {})[key] = value
    settings = load(args.config, overrides=overrides)
    _prepare_catalog(settings.catalog.url)  # as the gateway: the newest schema, or a message
    logging.config.dictConfig(
        logs.dict_config(settings.server.log_format, settings.server.log_level)
    )
    asyncio.run(worker.run(settings))
    return 0


def _ingest(args: argparse.Namespace) -> int:
    """``clipsync ingest``: a creator's upload from the command line (gateway.ingest_client)."""
    from gateway import ingest_client
    from gateway.notices import public_url

    base = args.to
    if base is None:
        base = public_url(load(args.config)).replace("//0.0.0.0:", "//127.0.0.1:")
    token = args.token or os.environ.get("CLIPSYNC_TOKEN")
    password = os.environ.get("CLIPSYNC_PASSWORD")
    if not token and args.email and not password:
        password = getpass.getpass(f"password for {args.email}: ")
    if args.chunk_mb < 1:
        raise SettingsError("--chunk-mb: at least 1")
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    options = ingest_client.Options(
        file=args.file,
        base=base,
        title=args.title or args.file.stem or args.file.name,
        privacy=args.privacy,
        token=token,
        email=args.email,
        password=password,
        chunk_bytes=args.chunk_mb * 1024 * 1024,
        wait=not args.no_wait,
        state=args.state or cache / "clipsync" / "uploads.json",
    )
    try:
        return ingest_client.run(options)
    except ingest_client.IngestError as exc:
        print(f"clipsync ingest: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nclipsync ingest: interrupted; run the same command to resume", file=sys.stderr)
        return 130


def _prepare_catalog(url: str) -> str:
    """Start-up check of the catalog: an empty embedded SQLite file gets the schema; any other
    database must be at the newest revision, or serve stops with what to do."""
    found = _on_catalog(
        url, lambda engine: catalog.prepare(engine, create_if_empty=catalog.engines.embedded(url))
    )
    return f"{catalog.engines.display(url)} at schema {found.current}"


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "demo" and args.library is None:
            args.library = "./data"
        if args.command == "db":
            overrides = {"catalog": {"url": args.catalog}} if args.catalog else {}
            return _db(args.action, load(args.config, overrides=overrides))
        if args.command == "sign":
            return _sign(args, load(args.config))
        if args.command == "worker":
            return _worker(args)
        if args.command == "ingest":
            return _ingest(args)
        if args.command == "check":
            from gateway import check

            return check.main(lambda: load(args.config, overrides=_overrides(args)), args.json)
        settings = load(args.config, overrides=_overrides(args))
        if args.command == "demo":
            library = settings.storage.library.removeprefix("file://")
            if "://" in library:
                raise SettingsError("storage.library: the demo needs a local folder")
            generate_demo(Path(library) / DEMO_ASSET, args.duration)
            base = f"http://{settings.server.host}:{settings.server.port}"
            print(f"Playback URL: {base}/vod/{DEMO_ASSET}/master.m3u8", flush=True)
            print(f"Player page:  {base}/player", flush=True)
            # A person watches the demo's terminal: plain lines rather than JSON for shippers.
            server = msgspec.structs.replace(settings.server, log_format="text")
            settings = msgspec.structs.replace(settings, server=server)
        _serve(settings)
    except SettingsError as exc:
        print(f"clipsync: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
