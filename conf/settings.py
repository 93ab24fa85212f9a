"""The one Settings object: defaults, then a TOML file, then CLIPSYNC_* environment variables.

Environment variables name a section and a key joined by a double underscore, e.g.
``CLIPSYNC_VOD__TARGET_DURATION=4`` or ``CLIPSYNC_STORAGE__LIBRARY=/srv/media``; ``CLIPSYNC_CONFIG``
names the TOML file. Nothing outside this package reads the environment.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

ENV_PREFIX = "CLIPSYNC_"
CONFIG_ENV = "CLIPSYNC_CONFIG"
# Settings already validated by the CLI, handed to server worker processes as JSON.
RESOLVED_ENV = "CLIPSYNC_RESOLVED"

SegmentFormat = Literal["fmp4", "ts"]


class SettingsError(Exception):
    """A setting is missing, unknown or out of range; the message names it."""


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    def __repr__(self) -> str:
        # Settings objects end up in tracebacks and debug logs: never with their secrets.
        shown = {
            name: "***" if name in SECRET_FIELDS and getattr(self, name) else getattr(self, name)
            for name in self.__struct_fields__
        }
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in shown.items())})"


Secret = Annotated[str, Meta(max_length=8192)]
# A ladder rung: "name:height:video kbit/s", e.g. "720p:720:3000" (the name is a path segment).
LADDER_RUNG = r"^[A-Za-z0-9_-]{1,16}:[1-9][0-9]{1,3}:[1-9][0-9]{1,5}$"


class StorageSettings(_Section, frozen=True):
    # A folder path or a storage URL: file://, memory://, az:// or abfs:// (container/prefix,
    # or container@account.dfs.core.windows.net/prefix), s3://bucket/prefix, http(s)://.
    library: Annotated[str, Meta(min_length=1)] = "./data"
    # Remote stores. A client request waits at most `deadline` seconds on storage in all; one
    # storage call at most `attempt_timeout`; transient failures are retried up to `retries`
    # more times, waiting a random part of min(retry_max_delay, retry_base_delay * 2^n).
    deadline: Annotated[float, Meta(gt=0.0, le=300.0)] = 10.0
    attempt_timeout: Annotated[float, Meta(gt=0.0, le=300.0)] = 4.0
    retries: Annotated[int, Meta(ge=0, le=10)] = 3
    retry_base_delay: Annotated[float, Meta(ge=0.0, le=10.0)] = 0.05
    retry_max_delay: Annotated[float, Meta(ge=0.0, le=60.0)] = 1.0
    # Ranged requests in flight per segment read, and the largest one (bigger ranges are split).
    read_concurrency: Annotated[int, Meta(ge=1, le=64)] = 8
    max_read_mb: Annotated[float, Meta(ge=0.0625, le=256.0)] = 8.0
    # Segment requests may reuse a stat answer this old (playlists always ask the store).
    stat_max_age: Annotated[float, Meta(ge=0.0, le=3600.0)] = 2.0
    # Upload parts / staged blocks; also bounds an upload's memory (about two parts).
    write_block_mb: Annotated[float, Meta(ge=5.0, le=512.0)] = 8.0
    write_timeout: Annotated[float, Meta(gt=0.0, le=3600.0)] = 120.0
    # Azure Blob: the first credential given wins, in this order; none: DefaultAzureCredential
    # if azure_default_credential, else anonymous access to a public container.
    azure_connection_string: Secret = ""
    azure_account_name: str = ""
    azure_account_key: Secret = ""
    azure_sas_token: Secret = ""
    azure_default_credential: bool = False
    # S3: keys (none: the usual AWS chain — environment, profile, instance role), region and
    # endpoint for S3-compatible stores (MinIO, R2, ...), or anonymous for public buckets.
    s3_key: Secret = ""
    s3_secret: Secret = ""
    s3_session_token: Secret = ""
    s3_region: str = ""
    s3_endpoint_url: str = ""
    s3_anonymous: bool = False


SECRET_FIELDS = frozenset(
    {
        "azure_connection_string",
        "azure_account_key",
        "azure_sas_token",
        "s3_key",
        "s3_secret",
        "s3_session_token",
        "redis_url",  # may carry a password
        "admin_token",
        "jwt_secret",
        "jwt_verify_keys",
        "playback_secret",
        "url",  # the catalog's database URL may carry a password
        "smtp_url",  # may carry a password
    }
)


class VodSettings(_Section, frozen=True):
    target_duration: Annotated[float, Meta(ge=1.0, le=60.0)] = 6.0
    # How far a segment may run past the target when keyframes allow a cut (Apple: 0.5 s).
    max_overrun: Annotated[float, Meta(ge=0.0, le=0.5)] = 0.5
    segment_format: SegmentFormat = "fmp4"
    playlist_max_age: Annotated[int, Meta(ge=0, le=31_536_000)] = 60
    segment_max_age: Annotated[int, Meta(ge=0, le=31_536_000)] = 31_536_000
    gzip_playlists: bool = True
    # Path mode: every /vod/ request needs a signed playback token (`clipsync sign <path>`).
    require_token: bool = False
    # Gap below which two byte ranges of one segment are read as one request.
    read_coalesce_gap: Annotated[int, Meta(ge=0, le=16 * 1024 * 1024)] = 64 * 1024
    # Wider gaps too, smallest first, while the bytes read in between stay within this
    # fraction of the segment's own: fewer requests to a remote store for a little more data.
    read_overfetch: Annotated[float, Meta(ge=0.0, le=1.0)] = 0.08


class CacheSettings(_Section, frozen=True):
    # In-process tier: a byte budget per kind of object (0: keep none of that kind).
    # Indexes are the parsed moov and segment plan of each source file.
    index_budget_mb: Annotated[float, Meta(ge=1.0, le=65_536.0)] = 256.0
    playlist_budget_mb: Annotated[float, Meta(ge=0.0, le=65_536.0)] = 32.0
    segment_budget_mb: Annotated[float, Meta(ge=0.0, le=65_536.0)] = 256.0
    # A cached playlist is answered without asking storage whether its source changed, so a
    # replaced file shows in playlists within playlist_ttl seconds (0: always ask).
    playlist_ttl: Annotated[float, Meta(ge=0.0, le=3600.0)] = 5.0
    # Indexes and segments are keyed by their source's version: these only bound their stay.
    index_ttl: Annotated[float, Meta(gt=0.0, le=31_536_000.0)] = 7 * 86_400.0
    segment_ttl: Annotated[float, Meta(gt=0.0, le=31_536_000.0)] = 86_400.0
    # Redis tier, shared by every replica: redis:// rediss:// unix:// redis+cluster://
    # redis+sentinel://host:port,host:port/service (empty: no Redis tier).
    redis_url: Annotated[str, Meta(max_length=4096)] = ""
    redis_prefix: Annotated[str, Meta(min_length=1, max_length=128)] = "clipsync:"
    # Whether segments go to Redis too (indexes and playlists always do).
    redis_segments: bool = True
    redis_max_value_mb: Annotated[float, Meta(gt=0.0, le=512.0)] = 16.0
    # One Redis call waits at most this long; after breaker_threshold failures in a row
    # Redis is not asked for breaker_cooldown seconds (then one probe call).
    redis_timeout: Annotated[float, Meta(gt=0.0, le=30.0)] = 0.25
    redis_max_connections: Annotated[int, Meta(ge=1, le=10_000)] = 64
    breaker_threshold: Annotated[int, Meta(ge=1, le=1000)] = 3
    breaker_cooldown: Annotated[float, Meta(gt=0.0, le=600.0)] = 2.0
    # Cross-replica build lock: held at most lock_ttl; others wait up to lock_wait for the
    # holder's result, then build themselves.
    lock_ttl: Annotated[float, Meta(gt=0.0, le=600.0)] = 10.0
    lock_wait: Annotated[float, Meta(ge=0.0, le=600.0)] = 2.0


class CatalogSettings(_Section, frozen=True):
    # sqlite:///path/file.db (the default, embedded) or postgresql://user:password@host/db.
    url: Annotated[str, Meta(min_length=1, max_length=4096)] = "sqlite:///./data/catalog.sqlite3"
    pool_size: Annotated[int, Meta(ge=1, le=1000)] = 10


class AuthSettings(_Section, frozen=True):
    # HS256 key of access tokens (at least 32 bytes; the same on every replica) and its key id.
    # Empty: the API's signed-in endpoints answer 401 (accounts are not configured).
    jwt_secret: Annotated[str, Meta(max_length=8192)] = ""
    jwt_kid: Annotated[str, Meta(min_length=1, max_length=64)] = "k1"
    # ES256: tokens signed with a P-256 private key (PEM file); HS256: with jwt_secret.
    jwt_algorithm: Literal["HS256", "ES256"] = "HS256"
    jwt_private_key_file: str = ""
    # Earlier keys still accepted while their tokens live out: kid -> secret, or -> public .pem.
    jwt_verify_keys: dict[str, str] = {}
    access_ttl: Annotated[int, Meta(ge=60, le=86_400)] = 900
    refresh_ttl: Annotated[int, Meta(ge=300, le=366 * 86_400)] = 30 * 86_400
    # bcrypt work factor (each step doubles the cost; 12 is about 250 ms on one core).
    password_cost: Annotated[int, Meta(ge=4, le=16)] = 12
    # After this many failed sign-ins for one email within lockout_minutes, it is locked for
    # lockout_minutes (429), registered or not.
    lockout_failures: Annotated[int, Meta(ge=1, le=1000)] = 5
    lockout_minutes: Annotated[float, Meta(gt=0, le=24 * 60)] = 15.0
    reset_ttl: Annotated[int, Meta(ge=60, le=7 * 86_400)] = 3600
    # Where this gateway is reached from outside (links in emails); empty: http://host:port.
    public_url: Annotated[str, Meta(max_length=2048)] = ""
    # Cookies for browsers carry Secure unless turned off (plain-HTTP local development only).
    cookie_secure: bool = True
    # Per client IP, in the `limits` notation ("N/second|minute|hour|day").
    # Signed playback URLs: their key (empty: jwt_secret; >= 32 bytes) and default lifetime.
    playback_secret: Annotated[str, Meta(max_length=8192)] = ""
    playback_ttl: Annotated[int, Meta(ge=60, le=30 * 86_400)] = 6 * 3600
    login_rate: Annotated[str, Meta(max_length=64)] = "20/minute"
    register_rate: Annotated[str, Meta(max_length=64)] = "10/hour"
    reset_rate: Annotated[str, Meta(max_length=64)] = "5/hour"
    # Per email address: reset links sent to one mailbox (answered 429 whoever owns it).
    reset_account_rate: Annotated[str, Meta(max_length=64)] = "3/hour"


class IngestSettings(_Section, frozen=True):
    # Largest upload accepted (checked at creation and while bytes stream in).
    max_upload_mb: Annotated[int, Meta(ge=1, le=1024 * 1024)] = 2048
    # Hours an unfinished upload may be resumed; then it and its parts are gone.
    upload_ttl_hours: Annotated[float, Meta(gt=0, le=24 * 30)] = 24.0
    # Storage each user may fill with originals and unfinished uploads (0: no limit).
    user_quota_gb: Annotated[float, Meta(ge=0)] = 50.0
    # The transcode ladder, "name:height:video kbit/s" per rung; rungs above the source's
    # height are skipped (a source below every rung gets one rung at its own size).
    ladder: Annotated[
        tuple[Annotated[str, Meta(pattern=LADDER_RUNG)], ...], Meta(min_length=1, max_length=12)
    ] = ("1080p:1080:5000", "720p:720:3000", "480p:480:1500", "360p:360:800")
    # libx264 preset: slower presets give smaller files for more CPU ("ultrafast" is left
    # out: it cannot make the H.264 High profile players are promised).
    x264_preset: Literal["superfast", "veryfast", "faster", "fast", "medium", "slow", "slower"] = (
        "veryfast"
    )
    # Seconds between storyboard thumbnails (the sprite sheets players show when seeking).
    thumbnail_interval: Annotated[float, Meta(ge=1.0, le=600.0)] = 5.0
    # Transcodes and thumbnail sets run in a child process this many nice steps below the
    # gateway or worker (0-19): on a shared machine, playback keeps the CPU it needs.
    transcode_nice: Annotated[int, Meta(ge=0, le=19)] = 19


class JobsSettings(_Section, frozen=True):
    # Where processing jobs wait: "memory" (this process), "redis" (a Redis Streams consumer
    # group that every gateway and `clipsync worker` shares), "auto" (redis when a Redis URL
    # is configured here or in [cache]).
    queue: Literal["auto", "memory", "redis"] = "auto"
    redis_url: Annotated[str, Meta(max_length=4096)] = ""  # empty: cache.redis_url
    redis_prefix: Annotated[str, Meta(min_length=1, max_length=128)] = "clipsync:"
    # Jobs each gateway process runs itself (0: leave them to `clipsync worker` processes,
    # which needs the Redis queue).
    gateway_workers: Annotated[int, Meta(ge=0, le=64)] = 1
    # Jobs one `clipsync worker` process runs at once (each transcode uses every core).
    worker_concurrency: Annotated[int, Meta(ge=1, le=64)] = 1
    # Attempts of a failing job before the video is marked failed (dead-letter stream).
    max_attempts: Annotated[int, Meta(ge=1, le=100)] = 5
    backoff_seconds: Annotated[float, Meta(ge=0.0, le=86_400.0)] = 30.0  # doubles each time
    backoff_max_seconds: Annotated[float, Meta(ge=0.0, le=7 * 86_400.0)] = 3600.0
    # A job whose worker has not been heard of for this long is taken over by another.
    claim_idle_seconds: Annotated[float, Meta(ge=0.5, le=86_400.0)] = 60.0
    redis_timeout: Annotated[float, Meta(gt=0.0, le=300.0)] = 5.0  # per queue command
    # `clipsync worker` answers Prometheus scrapes on this port (0: no metrics endpoint):
    # job durations by outcome and the queue's depth.
    metrics_port: Annotated[int, Meta(ge=0, le=65_535)] = 0


class MailSettings(_Section, frozen=True):
    # smtp://user:pass@host:587 (STARTTLS when offered), smtp+starttls://… (required),
    # smtps://…:465 (TLS from the start); empty: messages go to the outbox folder.
    smtp_url: Annotated[str, Meta(max_length=4096)] = ""
    sender: Annotated[str, Meta(min_length=3, max_length=320)] = "ClipSync <no-reply@localhost>"
    timeout: Annotated[float, Meta(gt=0.0, le=300.0)] = 10.0  # one whole SMTP exchange
    outbox: str = ""  # empty: <storage.library>/.outbox


class WebhookSettings(_Section, frozen=True):
    # Deliveries to loopback, private, link-local and other non-public addresses are refused
    # (checked at every attempt, on the address actually connected to); on for local setups.
    allow_private: bool = False
    timeout: Annotated[float, Meta(gt=0.0, le=120.0)] = 10.0  # one attempt, DNS included
    # Attempts before a delivery is failed; between them min(backoff_max, backoff_base *
    # 2^(n-1)) seconds, less up to a half at random.
    max_attempts: Annotated[int, Meta(ge=1, le=50)] = 8
    backoff_base: Annotated[float, Meta(ge=0.0, le=86_400.0)] = 10.0
    backoff_max: Annotated[float, Meta(ge=0.0, le=7 * 86_400.0)] = 3600.0
    max_per_user: Annotated[int, Meta(ge=1, le=1000)] = 10  # endpoints each user may have
    concurrency: Annotated[int, Meta(ge=1, le=256)] = 8  # sends at once per process
    # Seconds between looks for deliveries queued by other processes (this process's own
    # are sent at once).
    poll_interval: Annotated[float, Meta(gt=0.0, le=3600.0)] = 5.0
    keep_days: Annotated[float, Meta(gt=0.0, le=3650.0)] = 30.0  # finished deliveries' log


class ServerSettings(_Section, frozen=True):
    host: Annotated[str, Meta(min_length=1)] = "127.0.0.1"
    port: Annotated[int, Meta(ge=1, le=65_535)] = 8080
    workers: Annotated[int, Meta(ge=1, le=256)] = 1
    # Threads for blocking work (index parsing, synchronous storage reads) per worker.
    blocking_threads: Annotated[int, Meta(ge=1, le=256)] = 8
    # Largest moov box we agree to load (bytes); protects memory against hostile files.
    max_moov_mb: Annotated[float, Meta(ge=1.0, le=4096.0)] = 512.0
    # Bearer token for the admin endpoints (cache purge); empty: they answer 403.
    admin_token: Secret = ""
    # Proxies (addresses or networks: an Ingress, a load balancer, a CDN) whose
    # X-Forwarded-For names the client; empty: the peer is the client, the header is ignored.
    trusted_proxies: tuple[Annotated[str, Meta(max_length=64)], ...] = ()
    # Logs on standard error: "json" (one object per line, for log shippers) or "text".
    log_format: Literal["json", "text"] = "json"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    access_log: bool = True  # one line per request (clipsync.access)
    # Where the worker processes of one `clipsync serve` share their metrics (prometheus_client
    # multiprocess files), so a scrape of any worker counts them all. Empty: `serve` makes a
    # fresh folder per run; in-process apps (tests) keep their metrics in memory.
    metrics_dir: Annotated[str, Meta(max_length=4096)] = ""


class TracingSettings(_Section, frozen=True):
    # OpenTelemetry traces (needs `pip install 'clipsync-edge[otel]'`): spans for requests,
    # storage calls, index builds, packaging, database and Redis calls, sent over OTLP/HTTP.
    enabled: bool = False
    # Where spans go, e.g. http://otel-collector:4318/v1/traces; empty: the exporter's own
    # default (OTEL_EXPORTER_OTLP_* environment variables, else localhost:4318).
    endpoint: Annotated[str, Meta(max_length=4096)] = ""
    service_name: Annotated[str, Meta(min_length=1, max_length=128)] = "clipsync-edge"
    sample_ratio: Annotated[float, Meta(ge=0.0, le=1.0)] = 1.0  # of traces started here


class PlayerSettings(_Section, frozen=True):
    # Where the demo page loads hls.js from.
    hlsjs_url: str = "https://cdn.jsdelivr.net/npm/hls.js@1.7.4/dist/hls.min.js"


class Settings(_Section, frozen=True):
    storage: StorageSettings = StorageSettings()
    vod: VodSettings = VodSettings()
    cache: CacheSettings = CacheSettings()
    catalog: CatalogSettings = CatalogSettings()
    auth: AuthSettings = AuthSettings()
    mail: MailSettings = MailSettings()
    ingest: IngestSettings = IngestSettings()
    jobs: JobsSettings = JobsSettings()
    webhooks: WebhookSettings = WebhookSettings()
    server: ServerSettings = ServerSettings()
    player: PlayerSettings = PlayerSettings()
    tracing: TracingSettings = TracingSettings()


_PATH_RE = re.compile(r"at `\$\.([A-Za-z0-9_.]+)`")
_UNKNOWN_RE = re.compile(r"unknown field `([^`]+)`")


def _env_name(dotted: str) -> str:
    section, _, key = dotted.partition(".")
    return f"{ENV_PREFIX}{section.upper()}__{key.upper()}" if key else section


def _describe(exc: msgspec.ValidationError, source: str) -> str:
    text = str(exc)
    match = _PATH_RE.search(text)
    unknown = _UNKNOWN_RE.search(text)
    if unknown:
        dotted = f"{match.group(1)}.{unknown.group(1)}" if match else unknown.group(1)
        return f"unknown setting {dotted} (env {_env_name(dotted)}) from {source}"
    if not match:
        return f"invalid settings from {source}: {text}"
    dotted = match.group(1)
    reason = text[: match.start()].rstrip(" -")
    return f"invalid setting {dotted} (env {_env_name(dotted)}) from {source}: {reason}"


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _from_env(env: Mapping[str, str]) -> dict[str, dict[str, str]]:
    sections = {name for name in Settings.__struct_fields__}
    found: dict[str, dict[str, str]] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name in (CONFIG_ENV, RESOLVED_ENV):
            continue
        section, sep, key = name[len(ENV_PREFIX) :].lower().partition("__")
        if not sep or section not in sections or not key:
            raise SettingsError(
                f"unknown setting {name}: expected CLIPSYNC_<SECTION>__<KEY> with a section "
                f"among {', '.join(sorted(sections))}"
            )
        found.setdefault(section, {})[key] = _env_value(value)
    return found


def _env_value(value: str) -> Any:
    """Tables (``jwt_verify_keys``) and lists (``ingest.ladder``) come as JSON objects and
    arrays; everything else as text, which validation converts (numbers, booleans) or refuses
    with the setting's name."""
    if value.lstrip().startswith(("{", "[")):
        try:
            return json.loads(value)
        except ValueError:
            pass
    return value


def _validate(raw: Mapping[str, Any], source: str, *, strict: bool) -> Settings:
    try:
        return msgspec.convert(raw, Settings, strict=strict)
    except msgspec.ValidationError as exc:
        raise SettingsError(_describe(exc, source)) from None


def load(
    config_file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Build Settings from defaults < TOML file < environment < explicit overrides (CLI flags)."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    path = config_file or env.get(CONFIG_ENV)
    if path:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SettingsError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"config file {path} is not valid TOML: {exc}") from None
        _validate(raw, f"config file {path}", strict=True)
    env_values = _from_env(env)
    if env_values:
        merged = _merge(raw, env_values)
        # Environment values are strings: let msgspec convert "4" to 4.0 and "true" to True.
        _validate(merged, "the environment", strict=False)
        raw = merged
    if overrides:
        raw = _merge(raw, {k: dict(v) for k, v in overrides.items() if v})
    return _validate(raw, "the command line", strict=False)


def to_env(settings: Settings) -> dict[str, str]:
    """Environment that makes ``load_resolved`` return exactly ``settings`` in a child process."""
    return {RESOLVED_ENV: msgspec.json.encode(settings).decode()}


def load_resolved(env: Mapping[str, str] | None = None) -> Settings:
    """Settings handed down by the CLI if present, else the usual file + environment."""
    env = os.environ if env is None else env
    resolved = env.get(RESOLVED_ENV)
    if resolved:
        try:
            return msgspec.json.decode(resolved, type=Settings)
        except msgspec.ValidationError as exc:
            raise SettingsError(_describe(exc, RESOLVED_ENV)) from None
    return load(env=env)


def export(settings: Settings) -> None:
    """Put ``settings`` into this process's environment for the server's worker processes."""
    os.environ.update(to_env(settings))
