"""Readiness as an operator meets it: ``/readyz`` following real outages (a private Redis
stopped, paused and started again; a private PostgreSQL stopped and started again), and
``clipsync check`` run as a subprocess; reasons never carrying a password. The pure parts
(URLs shown, failures classified, verdicts, lines) are tested from tables."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy import text

from backends.catalog import Catalog, NewVideo, engines, upgrade
from backends.catalog.migrate import SchemaState
from backends.errors import MediaNotFound, StorageUnavailable
from conf import Settings
from conf.settings import AuthSettings
from gateway import check, health
from gateway.health import PROBE_TIMEOUT, ProbeFailure, Result
from tests.conftest import IN_CI, serving, settings_for
from tests.media import MediaLibrary
from tests.redis_fixtures import RedisServer
from tests.serving import Server, free_port

REDIS_SECRET = "redis-Pa55word-never-shown"
PG_SECRET = "pg-Pa55word-never-shown"


def gateway_settings(root: Path, catalog: str, **cache: object) -> Settings:
    raw = msgspec.to_builtins(settings_for(root, dict(cache)))
    raw["catalog"]["url"] = catalog
    return msgspec.convert(raw, Settings)


@contextlib.asynccontextmanager
async def readyz_of(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(settings, client_timeout=10) as (http, _):
        yield http


async def until(http: httpx.AsyncClient, status: int, within: float = 20.0) -> dict[str, Any]:
    """Ask /readyz until it answers ``status``; its body then."""
    deadline = time.monotonic() + within
    while True:
        r = await http.get("/readyz")
        if r.status_code == status:
            assert r.headers["cache-control"] == "no-store"
            body: dict[str, Any] = r.json()
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"/readyz still answers {r.status_code}: {r.text}")
        await asyncio.sleep(0.05)


# Pure parts, from tables ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:pw@h:6380/1", "redis://:***@h:6380/1"),
        ("rediss://user:pw@h/0?password=pw2", "rediss://user:***@h/0"),
        (
            "redis+sentinel://u:pw@s1:26379,s2:26379/main",
            "redis+sentinel://u:***@s1:26379,s2:26379/main",
        ),
        ("unix:///run/redis.sock?db=2", "unix:///run/redis.sock"),
        ("postgresql://app:p%40ss@db:5432/clips", "postgresql://app:***@db:5432/clips"),
        ("postgresql://app@db/clips?ssl=require", "postgresql://app@db/clips"),
        ("sqlite:///./data/catalog.sqlite3", "sqlite:///./data/catalog.sqlite3"),
        ("./data", "./data"),
    ],
)
def test_urls_are_shown_without_secrets(url: str, shown: str) -> None:
    assert health.shown(url) == shown


@pytest.mark.parametrize(
    ("url", "where"),
    [
        ("redis://127.0.0.1:6390/0", "127.0.0.1:6390"),
        ("redis://:pw@cache.internal/0", "cache.internal:6379"),
        ("redis+sentinel://s1:26379,s2/main", "s1:26379,s2:6379"),
        ("redis://[::1]:7000/0", "[::1]:7000"),
        ("unix:///run/redis.sock", "/run/redis.sock"),
    ],
)
def test_endpoints_for_hints(url: str, where: str) -> None:
    assert health.endpoint(url, 6379) == where


def test_every_secret_setting_is_scrubbed_from_reasons() -> None:
    settings = msgspec.convert(
        {
            "cache": {"redis_url": "redis://u:r3dis%2Fpw@h:6379/0"},
            "jobs": {"redis_url": "redis://h2:6379/0?password=jobs-pw"},
            "catalog": {"url": "postgresql://app:pg-pw@db/clips"},
            "storage": {
                "library": "az://media",
                "azure_connection_string": "AccountName=acct;AccountKey=AZ-KEY==;EndpointSuffix=x",
                "s3_secret": "S3-SECRET",
            },
            "auth": {"jwt_secret": "j" * 32},
        },
        Settings,
    )
    secrets = health.secrets_of(settings)
    said = (
        "AUTH r3dis/pw failed; r3dis%2Fpw; password=jobs-pw; pg-pw; key AZ-KEY==; S3-SECRET; "
        + "j" * 32
    )
    scrubbed = health.scrub(said, secrets)
    for secret in ("r3dis/pw", "r3dis%2Fpw", "jobs-pw", "pg-pw", "AZ-KEY==", "S3-SECRET", "j" * 32):
        assert secret not in scrubbed
    assert "acct" in health.scrub("account acct", secrets)  # names are not secrets


def _raised_from(outer: BaseException, inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException:
            raise outer  # noqa: B904 - the implicit context is what client libraries leave
    except BaseException as exc:
        return exc


class _PgError(Exception):
    def __init__(self, message: str, sqlstate: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    ("exc", "kind", "reason"),
    [
        (TimeoutError(), "timeout", "timed out: no answer within 0.25 s"),
        (
            RedisTimeoutError("Timeout reading from h:1"),
            "timeout",
            "timed out: no answer within 0.25 s",
        ),
        (
            _raised_from(
                RedisConnectionError("Error 111 connecting to h:1."),
                ConnectionRefusedError(111, "x"),
            ),
            "refused",
            "connection refused",
        ),
        (socket.gaierror(-2, "Name or service not known"), "dns", "host name not found"),
        (OSError(113, "No route to host"), "unreachable", "host unreachable"),
        (
            AuthenticationError("invalid username-password pair or user is disabled."),
            "auth",
            "authentication refused: invalid username-password pair or user is disabled.",
        ),
        (
            _PgError('password authentication failed for user "app"', "28P01"),
            "auth",
            'authentication refused: password authentication failed for user "app"',
        ),
        (
            _PgError('database "clips" does not exist', "3D000"),
            "missing",
            'database "clips" does not exist',
        ),
        (
            _PgError("the database system is starting up", "57P03"),
            "starting",
            "the database system is starting up",
        ),
        (MediaNotFound("/ not found"), "missing", "/ not found"),
        (
            StorageUnavailable("s3 storage unavailable: stat /: timed out (2 attempts)"),
            "error",
            "s3 storage unavailable: stat /: timed out (2 attempts)",
        ),
        (ValueError("first line\nsecond line"), "error", "first line"),
        (RuntimeError(), "error", "RuntimeError"),
    ],
)
def test_failures_are_classified_and_explained(exc: BaseException, kind: str, reason: str) -> None:
    assert health.classify(exc) == kind
    assert health.explain(exc, health.classify(exc), 0.25) == reason


@pytest.mark.parametrize(
    ("family", "kind", "hint"),
    [
        ("redis", "refused", "is redis-server running on h:6390?"),
        ("redis", "auth", "check the user and password in cache.redis_url"),
        ("postgresql", "refused", "is PostgreSQL running on h:6390?"),
        ("postgresql", "missing", "create the database, then run `clipsync db upgrade`"),
        ("storage", "dns", "check the host name in cache.redis_url"),
        ("redis", "error", None),
    ],
)
def test_hints(family: Any, kind: Any, hint: str | None) -> None:
    assert health.hint_for(family, kind, "h:6390", "cache.redis_url") == hint


KNOWN = ("0001", "0002", "0003")


@pytest.mark.parametrize(
    ("current", "embedded", "detail", "failure"),
    [
        ("0003", False, "schema 0003 (newest)", None),
        (None, True, "empty: `clipsync serve` creates the schema", None),
        (None, False, None, ("the database has no schema yet", "run `clipsync db upgrade`")),
        ("0002", True, None, ("schema 0002 is behind 0003", "run `clipsync db upgrade`")),
        ("0009", False, None, ("schema 0009 is newer than", "upgrade ClipSync")),
    ],
)
def test_schema_verdicts(
    current: str | None, embedded: bool, detail: str | None, failure: tuple[str, str] | None
) -> None:
    found = SchemaState(current, "0003")
    if failure is None:
        assert health.schema_verdict(found, KNOWN, embedded) == detail
        return
    with pytest.raises(ProbeFailure) as caught:
        health.schema_verdict(found, KNOWN, embedded)
    assert caught.value.reason.startswith(failure[0])
    assert caught.value.hint is not None
    assert caught.value.hint.startswith(failure[1])


def test_report_is_503_naming_what_is_down() -> None:
    up = Result("storage", True, "file:///srv", 0.3)
    off = health.not_configured("redis_jobs", "in-process job queue")
    down = Result("redis_cache", False, "redis://h:1/0", 1.5, error="connection refused")
    assert health.report([up, off]) == (
        200,
        {
            "status": "ready",
            "checks": {
                "storage": {"ok": True, "target": "file:///srv", "ms": 0.3},
                "redis_jobs": {"ok": True, "configured": False, "detail": "in-process job queue"},
            },
        },
    )
    status, body = health.report([up, down, off])
    assert status == 503
    assert body["status"] == "unready"
    assert body["failed"] == ["redis_cache"]
    assert body["checks"]["redis_cache"] == {
        "ok": False,
        "target": "redis://h:1/0",
        "ms": 1.5,
        "error": "connection refused",
    }


@pytest.mark.parametrize(
    ("result", "shown"),
    [
        (
            Result("storage", True, "file:///srv", 0.25),
            "storage      ok              file:///srv (0.2 ms)",
        ),
        (
            Result("catalog", True, "sqlite:///c.db", 3.0, detail="schema 0007 (newest)"),
            "catalog      ok              sqlite:///c.db (3.0 ms): schema 0007 (newest)",
        ),
        (
            Result(
                "redis_cache",
                False,
                "redis://h:1/0",
                1.0,
                error="connection refused",
                hint="is it up?",
            ),
            "redis_cache  FAILED          redis://h:1/0 (1.0 ms): connection refused; "
            "hint: is it up?",
        ),
        (
            health.not_configured("mail", "no mail.smtp_url"),
            "mail         not configured  no mail.smtp_url",
        ),
    ],
)
def test_check_lines(result: Result, shown: str) -> None:
    assert check.line(result) == shown


def _settings(**sections: dict[str, object]) -> Settings:
    return msgspec.convert(sections, Settings)


def test_checks_of_what_only_breaks_later() -> None:
    plain = _settings()
    assert check.processing(plain, False, {"libx264", "aac", "mjpeg"}).ok
    idle = check.processing(
        _settings(jobs={"gateway_workers": 0}), False, {"libx264", "aac", "mjpeg"}
    )
    assert not idle.ok
    assert idle.error is not None
    assert "never processed" in idle.error
    assert check.processing(
        _settings(jobs={"gateway_workers": 0}), True, {"libx264", "aac", "mjpeg"}
    ).ok
    no_x264 = check.processing(plain, False, {"aac", "mjpeg"})
    assert not no_x264.ok
    assert no_x264.error is not None
    assert "libx264" in no_x264.error
    assert not check.processing(plain, False, None).ok

    assert not check.playback(plain, 0).configured
    stranded = check.playback(plain, 3)
    assert not stranded.ok
    assert stranded.error is not None
    assert "3 private video(s)" in stranded.error
    keyed = check.playback(_settings(auth={"playback_secret": "p" * 32}), 3)
    assert keyed.ok
    assert keyed.detail == "signed playback URLs with auth.playback_secret"

    assert not check.accounts(plain).configured
    assert check.accounts(_settings(auth={"jwt_secret": "j" * 32})).ok


@pytest.mark.parametrize(
    ("sections", "named"),
    [
        ({"auth": {"jwt_secret": "short"}}, "auth.jwt_secret"),
        ({"auth": {"playback_secret": "short"}}, "auth.playback_secret"),
        ({"vod": {"require_token": True}}, "vod.require_token"),
        ({"auth": {"login_rate": "often"}}, "auth.login_rate"),
        ({"cache": {"redis_url": "http://h"}}, "cache.redis_url"),
        ({"jobs": {"queue": "redis"}}, "jobs.queue"),
        ({"mail": {"smtp_url": "smtp://"}}, "mail.smtp_url"),
        ({"mail": {"sender": "nobody"}}, "mail.sender"),
        ({"catalog": {"url": "mysql://h/db"}}, "catalog.url"),
        ({"storage": {"library": "ftp://h/media"}}, "storage.library"),
    ],
)
def test_settings_problems_name_their_setting(sections: dict[str, Any], named: str) -> None:
    problems = check.settings_problems(_settings(**sections))
    assert len(problems) == 1
    assert named in problems[0]


# /readyz against real components --------------------------------------------------------------


def test_readyz_of_the_default_embedded_gateway(server: Server) -> None:
    """``clipsync serve`` (granian) over a local folder and an SQLite catalog."""
    r = httpx.get(f"{server.base}/readyz", timeout=10)
    assert r.status_code == 200
    assert r.headers["cache-control"] == "no-store"
    body = r.json()
    assert body["status"] == "ready"
    checks = body["checks"]
    assert set(checks) == {"storage", "catalog", "redis_cache", "redis_jobs"}
    for name in ("storage", "catalog"):
        assert checks[name]["ok"] is True
        assert checks[name]["ms"] >= 0
    assert checks["storage"]["target"].startswith("file:///")
    assert checks["catalog"]["target"].startswith("sqlite:///")
    assert checks["redis_cache"] == {
        "ok": True,
        "configured": False,
        "detail": "no cache.redis_url: in-process cache only",
    }
    assert checks["redis_jobs"]["configured"] is False
    assert httpx.get(f"{server.base}/healthz", timeout=10).json() == {"status": "ok"}


@pytest.mark.anyio
async def test_readyz_follows_a_stopped_redis(
    media: MediaLibrary, own_redis: RedisServer, tmp_path: Path
) -> None:
    settings = gateway_settings(
        media.root, f"sqlite:///{tmp_path}/catalog.sqlite3", redis_url=own_redis.url
    )
    async with readyz_of(settings) as http:
        body = await until(http, 200)
        assert body["checks"]["redis_cache"]["ok"] is True
        assert body["checks"]["redis_jobs"]["ok"] is True  # jobs.queue auto: cache.redis_url
        assert body["checks"]["redis_cache"]["target"] == own_redis.url

        await asyncio.to_thread(own_redis.stop)
        body = await until(http, 503)
        assert body["status"] == "unready"
        assert set(body["failed"]) == {"redis_cache", "redis_jobs"}
        for name in ("redis_cache", "redis_jobs"):
            down = body["checks"][name]
            assert down["error"] == "connection refused"
            assert down["hint"] == f"is redis-server running on 127.0.0.1:{own_redis.port}?"
        assert body["checks"]["storage"]["ok"]
        assert body["checks"]["catalog"]["ok"]

        await asyncio.to_thread(own_redis.start)  # the same port, empty
        body = await until(http, 200)
        assert "failed" not in body


@pytest.mark.anyio
async def test_readyz_times_out_on_a_paused_redis(
    media: MediaLibrary, own_redis: RedisServer, tmp_path: Path
) -> None:
    settings = gateway_settings(
        media.root, f"sqlite:///{tmp_path}/catalog.sqlite3", redis_url=own_redis.url
    )
    async with readyz_of(settings) as http:
        await until(http, 200)
        own_redis.pause()  # SIGSTOP: connections are taken, nothing answers
        try:
            start = time.monotonic()
            r = await http.get("/readyz")
            took = time.monotonic() - start
        finally:
            own_redis.resume()
        assert r.status_code == 503
        assert took < PROBE_TIMEOUT + 1.0
        checks = r.json()["checks"]
        # The cache client's own timeout (cache.redis_timeout) ends its PING first; the job
        # queue's is longer (jobs.redis_timeout, 5 s): the probe's own timeout ends that one.
        assert checks["redis_cache"]["error"] == "timed out: no answer within 0.25 s"
        assert checks["redis_jobs"]["error"] == f"timed out: no answer within {PROBE_TIMEOUT:g} s"
        assert "does not answer" in checks["redis_jobs"]["hint"]
        await until(http, 200)


@pytest.mark.anyio
async def test_readyz_never_shows_a_password(
    media: MediaLibrary, own_redis: RedisServer, tmp_path: Path
) -> None:
    """Refused credentials (Redis: no such user) and an unreachable server (PostgreSQL): the
    reasons say so, and neither URL's password appears anywhere in the answer."""
    redis_url = f"redis://app:{REDIS_SECRET}@127.0.0.1:{own_redis.port}/0"
    pg_url = f"postgresql://app:{PG_SECRET}@127.0.0.1:{free_port()}/clips"
    async with readyz_of(gateway_settings(media.root, pg_url, redis_url=redis_url)) as http:
        r = await http.get("/readyz")
    assert r.status_code == 503
    assert REDIS_SECRET not in r.text
    assert PG_SECRET not in r.text
    checks = r.json()["checks"]
    assert checks["redis_cache"]["target"] == f"redis://app:***@127.0.0.1:{own_redis.port}/0"
    assert checks["redis_cache"]["error"].startswith("authentication refused")
    assert checks["redis_cache"]["hint"] == "check the user and password in cache.redis_url"
    assert checks["catalog"]["target"].startswith("postgresql://app:***@127.0.0.1:")
    assert checks["catalog"]["error"] == "connection refused"


# A private PostgreSQL server, stopped and started by the test ---------------------------------


def _pg_bin() -> Path | None:
    found = sorted(
        (Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin") if Path(p, "pg_ctl").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    return found[-1] if found else None


class PostgresServer:
    """``initdb`` + ``pg_ctl`` on a free port, data and socket in a temporary folder; trust
    authentication. PostgreSQL refuses to run as root: then it runs as the postgres user."""

    def __init__(self, binaries: Path) -> None:
        self.bin = binaries
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="clipsync-pg-"))
        self.data = self.folder / "data"
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.folder, owner.pw_uid, owner.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        initdb = ["-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync"]
        self._run("initdb", *initdb, "-E", "UTF8", "--locale=C")
        self.start()

    def _run(self, tool: str, *args: str) -> None:
        command = [*self.as_user, str(self.bin / tool), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed:\n{done.stdout}\n{done.stderr}\n{self.logged()}")

    def logged(self) -> str:
        log = self.folder / "server.log"
        return log.read_text(errors="replace") if log.exists() else ""

    def url(self, database: str = "postgres", password: str | None = None) -> str:
        user = f"postgres:{password}" if password else "postgres"
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.folder / "server.log")
        self._run("pg_ctl", "-D", str(self.data), "-l", log, "-o", options, "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[PostgresServer]:
    binaries = _pg_bin()
    if binaries is None or (os.geteuid() == 0 and not shutil.which("runuser")):
        message = (
            "PostgreSQL server binaries (/usr/lib/postgresql/<version>/bin) not found: "
            "apt-get install postgresql to run the catalog outage tests"
        )
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    server = PostgresServer(binaries)
    try:

        async def prepare() -> None:
            admin = engines.create(server.url())
            try:
                async with admin.execution_options(isolation_level="AUTOCOMMIT").connect() as conn:
                    await conn.execute(text("CREATE DATABASE clips"))
            finally:
                await admin.dispose()
            engine = engines.create(server.url("clips"))
            try:
                await upgrade(engine)
            finally:
                await engine.dispose()

        asyncio.run(prepare())
        yield server
    finally:
        server.remove()


@pytest.mark.anyio
async def test_readyz_follows_a_stopped_postgres(
    media: MediaLibrary, own_postgres: PostgresServer
) -> None:
    # Trust authentication takes any password: the URL carries one, and it must not show.
    url = own_postgres.url("clips", password=PG_SECRET)
    async with readyz_of(gateway_settings(media.root, url)) as http:
        r = await http.get("/readyz")
        assert r.status_code == 200, r.text
        assert PG_SECRET not in r.text
        catalog = r.json()["checks"]["catalog"]
        assert catalog["target"] == f"postgresql://postgres:***@127.0.0.1:{own_postgres.port}/clips"

        await asyncio.to_thread(own_postgres.stop)
        try:
            body = await until(http, 503)
            assert body["failed"] == ["catalog"]
            down = body["checks"]["catalog"]
            assert down["error"] == "connection refused"
            assert down["hint"] == f"is PostgreSQL running on 127.0.0.1:{own_postgres.port}?"
            assert PG_SECRET not in json.dumps(body)
        finally:
            await asyncio.to_thread(own_postgres.start)
        body = await until(http, 200)
        assert body["checks"]["catalog"]["ok"] is True


@pytest.mark.anyio
async def test_check_flags_private_videos_nobody_can_play(tmp_path: Path) -> None:
    """No playback key while the catalog holds private videos: their owners cannot play
    them. Counted in a real catalog; a key set, the same catalog is fine."""
    url = f"sqlite:///{tmp_path}/catalog.sqlite3"
    catalog = Catalog(engines.create(url))
    try:
        await upgrade(catalog.engine)
        owner = await catalog.create_user("ann@example.org")
        await catalog.create_video(owner.id, NewVideo(title="mine", privacy="private"))
        await catalog.create_video(owner.id, NewVideo(title="ours", privacy="public"))
    finally:
        await catalog.close()
    plain = _settings(storage={"library": str(tmp_path)}, catalog={"url": url})
    found = {r.name: r for r in await check.inspect(plain)}
    assert found["catalog"].ok
    assert not found["playback"].ok
    assert found["playback"].error is not None
    assert found["playback"].error.startswith("1 private video(s)")
    keyed = msgspec.structs.replace(
        plain, auth=msgspec.convert({"playback_secret": "p" * 32}, AuthSettings)
    )
    found = {r.name: r for r in await check.inspect(keyed)}
    assert found["playback"].ok


# clipsync check, as a subprocess --------------------------------------------------------------


def run_check(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CLIPSYNC_")}
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "check", *args],
        cwd=cwd,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def lines_of(output: str) -> dict[str, str]:
    return {line.split()[0]: line for line in output.splitlines() if line.strip()}


def migrated_sqlite(folder: Path, revision: str = "head") -> str:
    url = f"sqlite:///{folder}/catalog.sqlite3"

    async def migrate() -> None:
        engine = engines.create(url)
        try:
            await upgrade(engine, revision)
        finally:
            await engine.dispose()

    asyncio.run(migrate())
    return url


def test_check_passes_on_a_good_setup(tmp_path: Path, own_redis: RedisServer) -> None:
    env = {
        "CLIPSYNC_STORAGE__LIBRARY": str(tmp_path),
        "CLIPSYNC_CATALOG__URL": migrated_sqlite(tmp_path),
        "CLIPSYNC_CACHE__REDIS_URL": own_redis.url,
    }
    done = run_check(tmp_path, env)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = lines_of(done.stdout)
    for name in ("storage", "catalog", "redis_cache", "redis_jobs", "processing"):
        assert lines[name].split()[1] == "ok", lines[name]
    assert "schema" in lines["catalog"]
    assert "(newest)" in lines["catalog"]
    assert f"127.0.0.1:{own_redis.port}" in lines["redis_cache"]
    assert " ms)" in lines["storage"]
    assert "not configured" in lines["accounts"]
    assert done.stdout.rstrip().endswith("checks passed")


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"CLIPSYNC_CACHE__REDIS_TIMEOUT": "abc"}, "cache.redis_timeout"),
        ({"CLIPSYNC_CACHE__NO_SUCH_KEY": "1"}, "cache.no_such_key"),
    ],
)
def test_check_names_a_broken_setting(tmp_path: Path, env: dict[str, str], named: str) -> None:
    done = run_check(tmp_path, {"CLIPSYNC_STORAGE__LIBRARY": str(tmp_path), **env})
    assert done.returncode == 2
    assert named in done.stderr
    assert "settings error" in done.stderr


def test_check_fails_on_an_unreachable_redis_without_showing_its_password(
    tmp_path: Path,
) -> None:
    port = free_port()  # nobody listens there
    env = {
        "CLIPSYNC_STORAGE__LIBRARY": str(tmp_path),
        "CLIPSYNC_CATALOG__URL": migrated_sqlite(tmp_path),
        "CLIPSYNC_CACHE__REDIS_URL": f"redis://user:{REDIS_SECRET}@127.0.0.1:{port}/0",
    }
    done = run_check(tmp_path, env)
    assert done.returncode == 1, done.stdout + done.stderr
    line = lines_of(done.stdout)["redis_cache"]
    assert line.split()[1] == "FAILED"
    assert "connection refused" in line
    assert f"is redis-server running on 127.0.0.1:{port}?" in line
    assert f"redis://user:***@127.0.0.1:{port}/0" in line
    assert lines_of(done.stdout)["storage"].split()[1] == "ok"
    assert "FAILED: redis_cache, redis_jobs" in done.stdout
    assert REDIS_SECRET not in done.stdout + done.stderr

    as_json = run_check(tmp_path, env, "--json")
    assert as_json.returncode == 1
    body = json.loads(as_json.stdout)
    assert body["status"] == "failed"
    assert body["checks"]["redis_cache"]["ok"] is False
    assert body["checks"]["redis_cache"]["error"] == "connection refused"
    assert body["checks"]["catalog"]["ok"] is True
    assert REDIS_SECRET not in as_json.stdout + as_json.stderr


def test_check_says_to_migrate_a_catalog_behind(tmp_path: Path) -> None:
    url = migrated_sqlite(tmp_path, "0002")
    env = {"CLIPSYNC_STORAGE__LIBRARY": str(tmp_path), "CLIPSYNC_CATALOG__URL": url}
    done = run_check(tmp_path, env, "--json")
    assert done.returncode == 1
    catalog = json.loads(done.stdout)["checks"]["catalog"]
    assert catalog["ok"] is False
    assert catalog["error"].startswith("schema 0002 is behind")
    assert catalog["hint"] == "run `clipsync db upgrade`"
