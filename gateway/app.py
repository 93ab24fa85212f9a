"""The ASGI application factory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import Route

from auth import notify
from auth.accounts import AccountPolicy, Accounts
from auth.playback import from_settings as playback_signer
from auth.ratelimit import RateLimits
from auth.sessions import Sessions
from auth.tokens import from_settings as access_tokens
from backends import tracing
from backends.blocking import BlockingRunner
from backends.cache import metrics as cache_metrics
from backends.cache import open_cache
from backends.catalog import Catalog, engines, views
from backends.errors import ClipSyncError
from backends.jobs import open_queue
from backends.storage import Storage, open_storage
from backends.storage.remote import RemoteStorage
from conf import Settings, load_resolved
from gateway import access, errors, proxies, uploads
from gateway.access import Access
from gateway.admin import Admin
from gateway.api import api_routes
from gateway.api.accounts import AccountRoutes
from gateway.api.http import guarded
from gateway.api.identity import Identity
from gateway.assets import CatalogAssets, PathAssets
from gateway.cors import PublicCORS
from gateway.form_upload import FormUploads
from gateway.health import readiness
from gateway.ingest import Ingest
from gateway.library import Library
from gateway.metrics import GatewayMetrics
from gateway.notices import OwnerNotices, notifier_for, public_url
from gateway.processing import pipeline_for
from gateway.ranges import RangeNotSatisfiable
from gateway.routes import VodRoutes, healthz, player_page
from gateway.thumbnails import ThumbnailRoutes
from gateway.webhooks import Webhooks

log = logging.getLogger("clipsync.gateway")
UPLOAD_CLEAN_INTERVAL = 300.0  # seconds between sweeps of expired uploads (each worker)
SWEEP_INTERVAL = 300.0  # seconds between looks for unfinished videos that lost their job


def _accounts(
    settings: Settings, catalog: Catalog, notifier: notify.Notifier, metrics: GatewayMetrics
) -> tuple[Identity, AccountRoutes]:
    """Sign-in, sessions and rate limits as configured (no jwt_secret: no accounts)."""
    auth = settings.auth
    tokens = access_tokens(auth)
    limits = RateLimits(
        {
            "login": auth.login_rate,
            "register": auth.register_rate,
            "reset": auth.reset_rate,
            "reset_account": auth.reset_account_rate,
        },
        settings.cache.redis_url,
        settings.cache.redis_prefix,
        settings.cache.redis_timeout,
    )
    if tokens is None:
        identity = Identity(None, None, auth.cookie_secure)
        return identity, AccountRoutes(catalog, None, identity, limits, auth.refresh_ttl)
    sessions = Sessions(catalog, tokens, auth.refresh_ttl)
    policy = AccountPolicy(
        password_cost=auth.password_cost,
        lockout_failures=auth.lockout_failures,
        lockout_seconds=auth.lockout_minutes * 60,
        reset_ttl=auth.reset_ttl,
        reset_url=f"{public_url(settings)}/reset-password",
    )
    accounts = Accounts(catalog, sessions, notifier, policy)
    identity = Identity(tokens, sessions, auth.cookie_secure)
    routes = AccountRoutes(
        catalog, accounts, identity, limits, auth.refresh_ttl, metrics.logins_failed.inc
    )
    return identity, routes


def create_app(
    settings: Settings, storage: Storage | None = None, catalog: Catalog | None = None
) -> Starlette:
    runner = BlockingRunner(settings.server.blocking_threads)
    tracing.install(settings.tracing)
    metrics = GatewayMetrics(settings.server.metrics_dir)
    cache = open_cache(settings.cache, latency=cache_metrics.redis_latency(metrics.own))
    metrics.add_collector(cache_metrics.CacheCollector(cache))
    if storage is None:
        storage = open_storage(settings.storage, runner)
    if isinstance(storage, RemoteStorage):
        storage.observe(metrics.storage_call(storage.name))
    library = Library(
        settings, storage, runner, cache, lambda fmt, s: metrics.packaging.labels(fmt).observe(s)
    )
    if catalog is None:
        catalog = Catalog(engines.create(settings.catalog.url, settings.catalog.pool_size))
    tracing.instrument_engine(catalog.engine)
    signer = playback_signer(settings)
    playback = CatalogAssets(library, catalog, signer)
    videos = VodRoutes(library, playback)
    thumbs = ThumbnailRoutes(library, playback)
    seen = views.SharedSeen(cache.redis) if cache.redis is not None else views.Seen()
    aggregator = views.ViewAggregator(catalog, seen)
    notifier = notifier_for(settings)
    identity, account_routes = _accounts(settings, catalog, notifier, metrics)
    vod = VodRoutes(library, PathAssets(library, signer, settings.vod.require_token))
    admin = Admin(library, settings.server.admin_token, identity)
    hooks = Webhooks(catalog, settings.webhooks)
    queue = open_queue(settings.jobs, settings.cache.redis_url, settings.jobs.gateway_workers)

    notices = OwnerNotices(catalog, hooks, notifier, public_url(settings))
    pipeline = pipeline_for(settings, catalog, storage, runner, library, notices)
    processing = Ingest(
        queue,
        catalog,
        pipeline,
        settings.jobs.gateway_workers,
        metrics.job_time,
    )
    metrics.watch_queue(queue)
    form = FormUploads(
        catalog,
        storage,
        identity,
        settings.ingest.max_upload_mb * 1024 * 1024,
        int(settings.ingest.user_quota_gb * 1e9),
        on_complete=processing.start,
    )
    ingest = uploads.Uploads(
        catalog,
        storage,
        identity,
        settings.ingest.max_upload_mb * 1024 * 1024,
        settings.ingest.upload_ttl_hours * 3600,
        on_complete=processing.start,
        quota=int(settings.ingest.user_quota_gb * 1e9),
    )
    routes = [
        Route("/vod/{path:path}", vod.handle, methods=["GET", "HEAD"]),
        *thumbs.routes(),  # before the /v/ catch-all
        Route("/v/{path:path}", videos.handle, methods=["GET", "HEAD"]),
        Route("/player", player_page(settings.player.hlsjs_url), methods=["GET", "HEAD"]),
        Route("/healthz", healthz, methods=["GET", "HEAD"]),
        Route(
            "/readyz",
            readiness(settings, storage, catalog, cache, queue),
            methods=["GET", "HEAD"],
        ),
        Route("/metrics", metrics.page(), methods=["GET"]),
        Route("/api/v1/admin/purge", admin.purge, methods=["POST"]),
        Route(
            uploads.ROOT,
            guarded(metrics.uploading(ingest.collection)),
            methods=["POST", "OPTIONS"],
        ),
        Route(
            "/api/v1/videos/{video_id}/original",
            guarded(metrics.uploading(form.original)),
            methods=["POST"],
        ),
        Route(
            uploads.ROOT + "/{upload_id}",
            guarded(metrics.uploading(ingest.item)),
            methods=["HEAD", "PATCH", "DELETE", "OPTIONS"],
        ),
        *api_routes(
            catalog,
            identity,
            account_routes,
            storage,
            cache,
            playback,
            aggregator,
            signer,
            settings.auth.playback_ttl,
            hooks,
        ),
    ]
    middleware = [Middleware(Access, metrics=metrics), Middleware(PublicCORS)]
    if settings.server.trusted_proxies:  # before Access: the log and every check see the client
        trusted = proxies.parse_trusted(settings.server.trusted_proxies)
        middleware.insert(0, Middleware(proxies.TrustedProxies, trusted=trusted))
    traced = access.traced()
    if traced is not None:  # the server span is the parent of every span of the request
        middleware.insert(0, traced)
    handlers = {
        ClipSyncError: errors.handle_domain,
        RangeNotSatisfiable: errors.handle_domain,
        HTTPException: errors.handle_http,
        Exception: errors.handle_unexpected,
    }

    async def shutdown() -> None:
        """What the gateway finishes and closes on its way out (also run by in-process tests,
        where no lifespan runs)."""
        await account_routes.settle()  # reset emails being sent
        pipeline.stop.set()  # transcodes end at their next frame; their jobs go back
        await processing.settle()  # uploads being validated
        await queue.close()
        await notifier.close()  # no more reset emails or owner notices
        await aggregator.close()  # the view counts not written yet
        await hooks.close()  # webhook attempts under way
        await cache.close()  # pending cache writes, the purge subscription, Redis connections
        await account_routes.limits.close()
        await catalog.close()
        await storage.close()  # remote stores hold connection pools
        metrics.close()
        tracing.flush()  # spans still batched go out before the process ends

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        background = [
            asyncio.create_task(ingest.cleaner(UPLOAD_CLEAN_INTERVAL)),
            asyncio.create_task(processing.run(SWEEP_INTERVAL)),
            asyncio.create_task(hooks.run()),
            asyncio.create_task(metrics.refresh_forever()),
        ]
        metrics.started()
        yield
        pipeline.stop.set()
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await shutdown()

    app = Starlette(
        routes=routes, middleware=middleware, exception_handlers=handlers, lifespan=lifespan
    )
    app.state.library = library
    app.state.catalog = catalog
    app.state.views = aggregator
    app.state.uploads = ingest
    app.state.ingest = processing
    app.state.pipeline = pipeline
    app.state.webhooks = hooks
    app.state.shutdown = shutdown
    app.state.metrics = metrics
    return app


def factory() -> Starlette:
    """Entry point for granian workers: settings come from the CLI through ``conf``."""
    return create_app(load_resolved())
