"""Metrics, request ids and logs as an operator sees them: /metrics moving with traffic (by
route template, in one process and summed over two granian workers), every metric documented,
X-Request-ID taken or made and returned, JSON log lines that never hold a token or password."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.logs import redact
from tests.conftest import app_client, settings_for
from tests.media import MediaLibrary
from tests.metrics import Metrics, scrape, scrape_sync
from tests.serving import run_server, stop_server

pytestmark = pytest.mark.anyio

MEDIA = "h264_30fps_bframes"
MASTER = f"/vod/{MEDIA}.mp4/master.m3u8"
SEGMENT = f"/vod/{MEDIA}.mp4/main/seg-2.m4s"
VOD = "/vod/{path:path}"
README = Path(__file__).resolve().parent.parent / "README.md"
SECRET = "k" * 40  # auth.jwt_secret of the logging test


def requests(m: Metrics, route: str, status: str, method: str = "GET") -> float:
    return m.value("clipsync_http_requests_total", route=route, method=method, status=status)


async def test_requests_are_counted_by_route_template_and_status(media: MediaLibrary) -> None:
    media.good(MEDIA)
    async with app_client(media.root) as (http, _):
        before = await scrape(http)
        assert (await http.get(MASTER)).status_code == 200
        first = await http.get(SEGMENT)
        again = await http.get(SEGMENT)  # from the cache: counted, not packaged
        assert (await http.get("/vod/missing.mp4/master.m3u8")).status_code == 404
        assert (await http.get("/no/such/page")).status_code == 404
        assert (await http.head(SEGMENT)).status_code == 200
        seen = await scrape(http)
    assert first.status_code == again.status_code == 200
    assert requests(before, f"{VOD} segment", "200") == 0
    assert requests(seen, f"{VOD} segment", "200") == 2
    assert requests(seen, f"{VOD} segment", "200", "HEAD") == 1
    assert requests(seen, f"{VOD} master", "200") == 1
    assert requests(seen, f"{VOD} master", "404") == 1
    assert requests(seen, "unmatched", "404") == 1
    assert requests(seen, "/metrics", "200") == 1  # the first scrape
    bytes_sent = seen.value("clipsync_http_response_bytes_total", route=f"{VOD} segment")
    assert bytes_sent == 2 * len(first.content)
    timed = "clipsync_http_request_duration_seconds_count"
    assert seen.value(timed, route=f"{VOD} segment", method="GET") == 2
    assert seen.value("clipsync_packaging_seconds_count", format="fmp4") == 1
    # Never a raw path as a label: file names and ids would make a new series each.
    labels = {dict(ls).get("route", "") for (_, ls) in seen}
    assert not any(MEDIA in label or "seg-" in label for label in labels), labels


async def test_request_ids_are_taken_or_made_and_returned(media: MediaLibrary) -> None:
    media.good(MEDIA)
    async with app_client(media.root) as (http, _):
        given = await http.get(MASTER, headers={"x-request-id": "edge-7f3a.1:2"})
        made = await http.get(MASTER)
        again = await http.get(MASTER)
        refused = [
            await http.get(MASTER, headers={"x-request-id": bad})
            for bad in ("x" * 129, "two words", 'quote"d', "")
        ]
        missing = await http.get("/no/such/page")
    assert given.headers["x-request-id"] == "edge-7f3a.1:2"
    for response in (made, again, missing, *refused):
        assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"]), response.headers
    assert made.headers["x-request-id"] != again.headers["x-request-id"]


@pytest.mark.parametrize(
    ("line", "kept", "gone"),
    [
        ("GET /v/a/master.m3u8?token=v1.abc.def 200", "/v/a/master.m3u8?token=", "v1.abc"),
        ("https://x/y?a=1&upload_token=zz9&b=2", "&b=2", "zz9"),
        ("Authorization: Bearer abcdefgh12345", "Authorization: Bearer", "abcdefgh12345"),
        ("token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln here", "here", "eyJhbGci"),
        ("redis://user:s3cret@cache:6379/0", "redis://user:", "s3cret"),
        ("postgresql://clip:pw1@db/clip", "@db/clip", "pw1"),
        ('{"email": "a@b.c", "password": "hunter22"}', '"email": "a@b.c"', "hunter22"),
        ('{"msg": "{\\"password\\": \\"hunter22\\"}"}', "password", "hunter22"),
        ("password=hunter22&email=a", "&email=a", "hunter22"),
        ("CacheSettings(jwt_secret='abc123') ok", ") ok", "abc123"),
        ("GET /vod/movie/seg-1.m4s 200", "GET /vod/movie/seg-1.m4s 200", ""),
        # Any case: a line is searched for these words lower-cased before the patterns run.
        ("GET /x?Access_TOKEN=zz9 200", "/x?Access_TOKEN=", "zz9"),
        ("authorization: BEARER abcdefgh12345", "BEARER", "abcdefgh12345"),
        ("Basic dXNlcjpwYXNz", "Basic", "dXNlcjpwYXNz"),
        ("REDIS://user:s3cret@cache:6379/0", "REDIS://user:", "s3cret"),
        ('{"New_Password":"hunter22"}', "New_Password", "hunter22"),
        ('{"jwt_SECRET":"abc123"}', "jwt_SECRET", "abc123"),
    ],
)
def test_secrets_are_scrubbed_from_log_lines(line: str, kept: str, gone: str) -> None:
    scrubbed = redact(line)
    assert kept in scrubbed
    if gone:
        assert gone not in scrubbed
        assert "***" in scrubbed


def test_logs_are_json_lines_with_request_ids_and_no_secrets(
    media: MediaLibrary, tmp_path: Path
) -> None:
    media.good(MEDIA)
    settings = settings_for(media.root, server={"log_format": "json"})
    raw = msgspec.to_builtins(settings)
    raw["auth"].update({"jwt_secret": SECRET, "cookie_secure": False})
    server = run_server(msgspec.convert(raw, type(settings)), tmp_path / "gateway.log")
    password = "Correct-Horse-Battery-9"
    token = "v1.abcdefghijklmnop.qrstuvwxyz"
    bearer = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLXNpZw"
    try:
        with httpx.Client(base_url=server.base, timeout=20) as http:
            played = http.get(
                f"{MASTER}?token={token}",
                headers={"x-request-id": "trace-1", "accept-encoding": "identity"},
            )
            refused = http.post(
                "/api/v1/auth/login", json={"email": "nobody@example.com", "password": password}
            )
            me = http.get("/api/v1/auth/me", headers={"authorization": f"Bearer {bearer}"})
            seen = scrape_sync(server.base)
    finally:
        stop_server(server)
    assert played.status_code == 200
    assert refused.status_code == 401
    assert me.status_code == 401
    assert seen.value("clipsync_logins_failed_total") == 1

    text = (tmp_path / "gateway.log").read_text()
    for secret in (password, token, bearer, SECRET):
        assert secret not in text
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert all({"ts", "level", "logger", "message"} <= set(r) for r in records), records
    access = [r for r in records if r["logger"] == "clipsync.access"]
    mine = [r for r in access if r["request_id"] == "trace-1"]
    assert len(mine) == 1, access
    assert mine[0]["path"] == MASTER  # the query string (the token) is never logged
    assert mine[0]["route"] == f"{VOD} master"
    assert mine[0]["status"] == 200
    assert mine[0]["bytes"] == len(played.content)
    login = [r for r in access if r["path"] == "/api/v1/auth/login"]
    assert login[0]["status"] == 401
    assert login[0]["request_id"] == refused.headers["x-request-id"]
    assert any(r["logger"] == "clipsync.serve" for r in records)  # the banner, as JSON too


def test_two_workers_report_one_sum(media: MediaLibrary, tmp_path: Path) -> None:
    """A scrape reaches one granian worker; it must count the requests both served."""
    media.good(MEDIA)
    folder = tmp_path / "metrics"
    settings = settings_for(media.root, server={"workers": 2, "metrics_dir": str(folder)})
    server = run_server(settings, tmp_path / "gateway.log")
    try:
        sent = 0
        deadline = time.monotonic() + 60
        # New connections until both workers have answered some (the kernel picks the worker).
        while (len(_writers(folder)) < 2 or sent < 20) and time.monotonic() < deadline:
            for _ in range(10):
                with httpx.Client(base_url=server.base, timeout=20) as http:
                    assert http.get(SEGMENT).status_code == 200
                sent += 1
        assert len(_writers(folder)) >= 2, "every request went to one worker"
        time.sleep(1.5)  # the cache counters are mirrored every second
        scrapes = [scrape_sync(server.base) for _ in range(6)]
    finally:
        stop_server(server)
    for seen in scrapes:
        assert requests(seen, f"{VOD} segment", "200") == sent
        # The cache counters of every worker: each that served the segment packaged it once
        # and answered the rest from its memory.
        builds = seen.value("clipsync_cache_builds_total", kind="segment")
        hits = seen.value("clipsync_cache_hits_total", tier="memory", kind="segment")
        assert 1 <= builds <= 2, seen
        assert builds + hits == sent
        assert seen.value("clipsync_startup_seconds") > 0


def _writers(folder: Path) -> set[str]:
    """The processes that timed requests (histogram files appear with the first request)."""
    return {p.stem.rsplit("_", 1)[1] for p in folder.glob("histogram_*.db")}


def documented_metrics() -> set[str]:
    names: set[str] = set()
    for line in README.read_text().splitlines():
        if line.startswith("| `clipsync_"):
            names.update(re.findall(r"`(clipsync_[a-z_]+)`", line.split("|")[1]))
    return names


async def test_every_exposed_metric_is_documented(
    media: MediaLibrary, shared_redis: str, redis_prefix: str
) -> None:
    media.good(MEDIA)
    cache = {"redis_url": shared_redis, "redis_prefix": redis_prefix}
    async with app_client(media.root, cache) as (http, app):
        await http.get(SEGMENT)
        await app.state.library.cache.settle()
        text = (await http.get("/metrics")).text
    exposed = {family.name for family in text_string_to_metric_families(text)}
    assert len(exposed) > 20
    missing = sorted(exposed - {_base(n) for n in documented_metrics()})
    assert not missing, f"metrics missing from README's tables: {missing}"


def _base(name: str) -> str:
    """The family name of a documented metric (counters are documented with _total)."""
    return name.removesuffix("_total")
