"""Readiness probes: ``/readyz`` and ``clipsync check`` run the same ones.

One probe per configured component (the library's storage, the catalog database, the Redis
cache tier, the Redis job queue), all at once, each within ``PROBE_TIMEOUT``. A probe never
raises: a timeout or an error becomes ``ok: false`` with a reason and a hint. Nothing a probe
reports carries a secret: targets are shown without passwords or query strings, and reasons are
scrubbed of every secret setting's value (a client library's error text may quote one).

Probes ask the components directly, never through the cache tier's circuit breaker: an open
breaker says Redis failed a moment ago, readiness wants to know whether it answers now.
``/healthz`` stays "the process is alive" and asks nothing: a liveness probe that followed a
dependency would restart every replica during that dependency's outage.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from collections.abc import Awaitable, Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import msgspec
from redis.exceptions import AuthenticationError, BusyLoadingError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from backends.cache import TieredCache
from backends.cache.flight import SingleFlight
from backends.catalog import Catalog, engines
from backends.catalog.migrate import SchemaState, revisions, state
from backends.errors import ClipSyncError, MediaNotFound
from backends.jobs import JobQueue, StreamQueue, queue_url
from backends.storage import LocalStorage, Storage, deadline_scope
from conf import Settings
from conf.settings import SECRET_FIELDS

PROBE_TIMEOUT = 2.0  # seconds a probe may take; /readyz answers within about this
# Remote storage retries within a deadline of its own, set shorter, so a store that keeps
# failing ends with its own reason ("connection refused (3 attempts)") rather than ours.
STORAGE_DEADLINE = PROBE_TIMEOUT * 0.8
MAX_REASON = 300  # characters of a library's error text kept in a reason

Kind = Literal["timeout", "refused", "dns", "unreachable", "auth", "missing", "starting", "error"]
Family = Literal["storage", "sqlite", "postgresql", "redis"]

# PostgreSQL SQLSTATEs (asyncpg's exceptions carry them; no import of the untyped driver).
_SQLSTATE_KINDS: dict[str, Kind] = {
    "28000": "auth",  # invalid_authorization_specification: no such role, pg_hba refusal
    "28P01": "auth",  # invalid_password
    "3D000": "missing",  # invalid_catalog_name: no such database
    "57P03": "starting",  # cannot_connect_now: starting up, shutting down, recovering
}
_PHRASES: dict[Kind, str] = {
    "refused": "connection refused",
    "dns": "host name not found",
    "unreachable": "host unreachable",
}
_HINTS: dict[tuple[Family | None, Kind], str] = {
    ("redis", "refused"): "is redis-server running on {endpoint}?",
    ("redis", "timeout"): (
        "Redis at {endpoint} takes connections but does not answer: paused, overloaded, "
        "or a firewall dropping packets?"
    ),
    ("redis", "auth"): "check the user and password in {setting}",
    ("redis", "starting"): "Redis is loading its data set; it answers when done",
    ("postgresql", "refused"): "is PostgreSQL running on {endpoint}?",
    ("postgresql", "timeout"): (
        "PostgreSQL at {endpoint} does not answer in time: overloaded, or a firewall "
        "dropping packets?"
    ),
    ("postgresql", "auth"): "check the user and password in {setting}",
    ("postgresql", "missing"): "create the database, then run `clipsync db upgrade`",
    ("postgresql", "starting"): "PostgreSQL is starting or shutting down: try again shortly",
    ("sqlite", "error"): "check that {endpoint} is a SQLite file this user may read and write",
    ("storage", "error"): "check {setting} and that the store answers from this host",
    ("storage", "timeout"): "is the store at {endpoint} reachable from this host?",
    (None, "dns"): "check the host name in {setting}",
    (None, "unreachable"): "check the network route to {endpoint}",
    (None, "refused"): "is anything listening on {endpoint}?",
    (None, "timeout"): "is {endpoint} reachable from this host?",
}
# Query parameters and connection-string keys whose values are credentials.
_SENSITIVE = ("pass", "secret", "token", "key", "sig", "auth")


@dataclass(frozen=True)
class Result:
    """What one check found. ``configured=False``: the component is not used (ok by design)."""

    name: str
    ok: bool
    target: str = ""
    ms: float | None = None
    error: str | None = None
    hint: str | None = None
    detail: str | None = None
    configured: bool = True

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": self.ok}
        if not self.configured:
            out["configured"] = False
        if self.target:
            out["target"] = self.target
        if self.ms is not None:
            out["ms"] = self.ms
        for key in ("detail", "error", "hint"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


def not_configured(name: str, detail: str) -> Result:
    return Result(name, True, detail=detail, configured=False)


class ProbeFailure(Exception):
    """The component answered, but not as it must (a schema behind, a folder gone)."""

    def __init__(self, reason: str, hint: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.hint = hint


@dataclass(frozen=True)
class Probe:
    name: str
    family: Family
    target: str  # shown as is: no secrets
    call: Callable[[], Awaitable[str | None]]  # a detail when fine; raises otherwise
    setting: str  # the setting that names the component, for hints
    endpoint: str = ""  # host:port or a path, for hints
    client_timeout: float | None = None  # the client's own per-call timeout, for reasons


# Pure parts -------------------------------------------------------------------------------


def shown(url: str) -> str:
    """``url`` as probes show it: the password masked, no query string or fragment (either may
    carry a credential). Sentinel host lists pass unchanged."""
    if "://" not in url:
        return url
    scheme, netloc, path = urlsplit(url)[:3]
    userinfo, at, hosts = netloc.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}{':***' if colon else ''}@{hosts}"
    return f"{scheme}://{netloc}{path}"


def endpoint(url: str, default_port: int) -> str:
    """Where ``url`` connects, for hints: host:port (each host of a list), or a socket path."""
    scheme, netloc, path = urlsplit(url)[:3]
    if scheme == "unix":
        return path
    hosts = netloc.rpartition("@")[2] or "localhost"
    return ",".join(
        host if host.rpartition(":")[2].isdigit() else f"{host}:{default_port}"
        for host in hosts.split(",")
    )


def _credential_parts(value: str) -> set[str]:
    """A secret and the pieces of it an error text may quote on their own."""
    parts = {value}
    if "://" in value:
        split = urlsplit(value)
        password = split.netloc.rpartition("@")[0].partition(":")[2]
        parts |= {password, unquote(password)}
        query = parse_qsl(split.query)
        parts |= {v for k, v in query if any(word in k.lower() for word in _SENSITIVE)}
    elif ";" in value and "=" in value:  # an Azure connection string: AccountKey=...;...
        for item in value.split(";"):
            key, _, val = item.partition("=")
            if any(word in key.lower() for word in _SENSITIVE):
                parts.add(val)
    return {p for p in parts if p} | {quote(p, safe="") for p in parts if p}


def secrets_of(settings: Settings) -> frozenset[str]:
    """Every secret setting's value (and its quotable pieces): what no reason may contain."""
    found: set[str] = set()
    for section in msgspec.to_builtins(settings).values():
        for key, value in section.items():
            if key not in SECRET_FIELDS or not value:
                continue
            for item in value.values() if isinstance(value, dict) else (value,):
                found |= _credential_parts(str(item))
    return frozenset(found)


def scrub(text: str, secrets: Collection[str]) -> str:
    # Longest first: a password inside a whole URL is replaced with the URL.
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or while handling (a wrapper's cause)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _kind_of(exc: BaseException) -> Kind | None:
    if isinstance(exc, TimeoutError | RedisTimeoutError):
        return "timeout"
    if isinstance(exc, AuthenticationError):
        return "auth"
    if isinstance(exc, ResponseError) and str(exc).startswith(("NOAUTH", "WRONGPASS")):
        return "auth"
    if isinstance(exc, BusyLoadingError):
        return "starting"
    if isinstance(exc, MediaNotFound):
        return "missing"
    if isinstance(exc, socket.gaierror):
        return "dns"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "unreachable"
    sqlstate = getattr(exc, "sqlstate", None)
    return _SQLSTATE_KINDS.get(sqlstate) if isinstance(sqlstate, str) else None


def classify(exc: BaseException) -> Kind:
    """What kind of failure ``exc`` is, from the first exception of its chain that tells."""
    for link in _chain(exc):
        kind = _kind_of(link)
        if kind is not None:
            return kind
    return "error"


def message(exc: BaseException) -> str:
    """The telling line of ``exc``'s text: a database's own message, not SQLAlchemy's wrapping
    of it (the SQL and a documentation link)."""
    inner: BaseException = exc
    if isinstance(exc, DBAPIError) and isinstance(exc.orig, BaseException):
        inner = exc.orig
    lines = str(inner).strip().splitlines()
    text = lines[0].strip() if lines else ""
    if not text:
        return type(inner).__name__
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 1] + "…"


def explain(exc: BaseException, kind: Kind, timeout: float | None) -> str:
    if kind == "timeout":
        return f"timed out: no answer within {timeout:g} s" if timeout else "timed out"
    if kind in _PHRASES:
        return _PHRASES[kind]
    if kind == "auth" and not isinstance(exc, ClipSyncError):
        return f"authentication refused: {message(exc)}"
    return message(exc)


def hint_for(family: Family, kind: Kind, where: str, setting: str) -> str | None:
    template = _HINTS.get((family, kind)) or _HINTS.get((None, kind))
    return template.format(endpoint=where, setting=setting) if template else None


def schema_verdict(found: SchemaState, known: Collection[str], embedded: bool) -> str:
    """The detail of a catalog at the schema this code needs; ProbeFailure otherwise."""
    if found.ready:
        return f"schema {found.current} (newest)"
    if found.current is None:
        if embedded:  # `clipsync serve` migrates an empty embedded database itself
            return "empty: `clipsync serve` creates the schema"
        raise ProbeFailure("the database has no schema yet", "run `clipsync db upgrade`")
    if found.current in known:
        raise ProbeFailure(
            f"schema {found.current} is behind {found.head}", "run `clipsync db upgrade`"
        )
    raise ProbeFailure(
        f"schema {found.current} is newer than this ClipSync knows (newest here {found.head})",
        "upgrade ClipSync, or check that catalog.url names the right database",
    )


def report(results: Sequence[Result]) -> tuple[int, dict[str, Any]]:
    """The status code and body of ``/readyz``: 200 when every configured component answered,
    503 naming those that did not."""
    failed = [r.name for r in results if not r.ok]
    body: dict[str, Any] = {
        "status": "unready" if failed else "ready",
        "checks": {r.name: r.as_json() for r in results},
    }
    if failed:
        body["failed"] = failed
    return (503 if failed else 200), body


# Running probes ---------------------------------------------------------------------------


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 1)


async def run(probe: Probe, secrets: Collection[str] = ()) -> Result:
    """``probe`` within PROBE_TIMEOUT; every failure becomes a Result, never an exception."""
    start = time.perf_counter()
    clock = asyncio.timeout(PROBE_TIMEOUT)
    try:
        async with clock:
            detail = await probe.call()
    except Exception as exc:  # a probe reports what went wrong; it never raises
        if isinstance(exc, ProbeFailure):
            reason, hint = exc.reason, exc.hint
        else:
            expired = clock.expired()
            kind = "timeout" if expired else classify(exc)
            reason = explain(exc, kind, PROBE_TIMEOUT if expired else probe.client_timeout)
            hint = hint_for(probe.family, kind, probe.endpoint, probe.setting)
        return Result(
            probe.name,
            False,
            probe.target,
            _ms(start),
            error=scrub(reason, secrets),
            hint=scrub(hint, secrets) if hint else None,
        )
    return Result(probe.name, True, probe.target, _ms(start), detail=detail)


async def probe_all(items: Sequence[Probe | Result], secrets: Collection[str]) -> list[Result]:
    """Every probe at once (a Result stands for a check already decided)."""

    async def one(item: Probe | Result) -> Result:
        return item if isinstance(item, Result) else await run(item, secrets)

    return list(await asyncio.gather(*(one(item) for item in items)))


def storage_probe(storage: Storage) -> Probe:
    local = isinstance(storage, LocalStorage)

    async def call() -> str | None:
        with deadline_scope(STORAGE_DEADLINE):
            try:
                await storage.stat("")  # one HEAD or a one-key listing: cheap on any store
            except MediaNotFound:
                if local:
                    raise ProbeFailure(
                        "the library folder is gone",
                        "mount or create it, or point storage.library at the library",
                    ) from None
                # An object store answered: a prefix with nothing under it does not "exist".
                return "reachable; the library is empty"
        return None

    return Probe("storage", "storage", storage.uri, call, "storage.library", storage.uri)


def catalog_probe(engine: AsyncEngine, url: str, *, schema: bool = False) -> Probe:
    """``SELECT 1`` through ``engine``; with ``schema``, also whether the schema is current."""
    parsed = engines.parse(url)
    embedded = parsed.drivername.startswith("sqlite")
    if embedded:
        where = parsed.database or ""
    else:
        where = f"{parsed.host or 'localhost'}:{parsed.port or 5432}"

    async def select_one() -> None:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def call() -> str | None:
        try:
            await select_one()
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            stale = True
        else:
            stale = False
        if stale:
            # A pooled connection the server had closed (a restart): the pool has dropped it,
            # and a new connection tells whether the database answers now. (Outside the except
            # block: raised in there, its failure would hide its own cause behind the first.)
            await select_one()
        if not schema:
            return None
        return schema_verdict(await state(engine), revisions(), embedded)

    family: Family = "sqlite" if embedded else "postgresql"
    return Probe("catalog", family, shown(url), call, "catalog.url", where)


def redis_probe(name: str, client: Any, url: str, setting: str, timeout: float) -> Probe:
    """PING on ``client`` (a redis-py asyncio client: the ``Any`` stays here)."""

    async def call() -> str | None:
        try:
            await client.ping()
            return None
        except AuthenticationError:
            raise
        except RedisConnectionError:
            pass
        # A pooled connection the server closed (a restart, its idle timeout) fails once;
        # redis-py drops it, and a new connection tells whether Redis answers now. (Outside
        # the except block: raised in there, its failure would hide its cause behind the first.)
        await client.ping()
        return None

    return Probe(name, "redis", shown(url), call, setting, endpoint(url, 6379), timeout)


def cache_probe(settings: Settings, cache: TieredCache) -> Probe | Result:
    if cache.redis is None:
        return not_configured("redis_cache", "no cache.redis_url: in-process cache only")
    url, timeout = settings.cache.redis_url, settings.cache.redis_timeout
    return redis_probe("redis_cache", cache.redis.client, url, "cache.redis_url", timeout)


def queue_probe(settings: Settings, queue: JobQueue) -> Probe | Result:
    if not isinstance(queue, StreamQueue):
        return not_configured("redis_jobs", "in-process job queue")
    url = queue_url(settings.jobs, settings.cache.redis_url)
    setting = "jobs.redis_url" if settings.jobs.redis_url else "cache.redis_url"
    return redis_probe("redis_jobs", queue.redis, url, setting, settings.jobs.redis_timeout)


class Readiness:
    """``GET /readyz``: the probes of this gateway's own components."""

    def __init__(self, items: Sequence[Probe | Result], secrets: Collection[str]) -> None:
        self.items = items
        self.secrets = secrets
        self._flight: SingleFlight[list[Result]] = SingleFlight()

    async def handle(self, request: Request) -> Response:
        # Concurrent requests (several load balancers, retries during an outage) share one
        # round of probes instead of piling connections onto a component that is struggling.
        results = await self._flight.run("readyz", lambda: probe_all(self.items, self.secrets))
        status, body = report(results)
        return JSONResponse(body, status_code=status, headers={"cache-control": "no-store"})


def readiness(
    settings: Settings, storage: Storage, catalog: Catalog, cache: TieredCache, queue: JobQueue
) -> Callable[[Request], Awaitable[Response]]:
    """The ``/readyz`` endpoint over the app's own storage, catalog, cache and queue."""
    items = [
        storage_probe(storage),
        catalog_probe(catalog.reader, settings.catalog.url),
        cache_probe(settings, cache),
        queue_probe(settings, queue),
    ]
    return Readiness(items, secrets_of(settings)).handle
