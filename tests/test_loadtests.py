"""The load tests: the simulated player's rules from tables, and the CI smoke run: a gateway
seeded by `python -m loadtests.seed`, then 20 s of Locust headless with every user class,
failing on any failed request."""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from conf import Settings
from loadtests.player import Playback, Variant, Zipf, choose, estimate, media, variants
from tests.conftest import require, settings_for
from tests.serving import run_server, stop_server

ROOT = Path(__file__).resolve().parent.parent
LADDER = [Variant(300_000, "low"), Variant(1_000_000, "mid"), Variant(3_000_000, "high")]


@pytest.mark.parametrize(
    ("throughput", "index"),
    [
        (None, 0),  # nothing measured yet: start low
        (100_000, 0),  # nothing fits: the lowest
        (400_000, 0),  # 300k fits 0.8 x 400k
        (1_250_000, 1),  # exactly 0.8 x 1.25M = 1M
        (1_249_999, 0),
        (3_750_000, 2),
        (50_000_000, 2),
    ],
)
def test_the_player_picks_the_best_variant_that_fits(throughput: float | None, index: int) -> None:
    assert choose(LADDER, throughput) == index


def test_the_throughput_estimate_moves_toward_each_sample() -> None:
    assert estimate(None, 1000.0) == 1000.0
    assert estimate(1000.0, 2000.0) == pytest.approx(1300.0)
    assert estimate(1000.0, 0.0) == pytest.approx(700.0)


def test_the_buffer_fills_drains_stalls_and_paces() -> None:
    play = Playback(speed=2.0, target=10.0)
    assert play.add(6.0, now=100.0) == 0.0  # playback starts with the first segment
    assert play.wait(now=100.0) == 0.0  # below the target: fetch at once
    assert play.add(6.0, now=101.0) == 0.0  # 1 s of wall time played 2 s of media
    assert play.buffer == pytest.approx(10.0)
    assert play.add(6.0, now=101.0) == 0.0
    assert play.wait(now=101.0) == pytest.approx(3.0)  # 16 s buffered: (16 - 10) / 2
    stall = play.add(6.0, now=111.0)  # 20 s of media wanted, 16 s there: a 4 s stall
    assert stall == pytest.approx(4.0)
    assert play.stalls == [pytest.approx(4.0)]
    assert play.buffer == pytest.approx(6.0)
    play.seek()
    assert (play.buffer, play.clock) == (0.0, None)
    assert play.add(6.0, now=500.0) == 0.0  # no stall counted across a seek


def test_zipf_favours_the_first_ranks() -> None:
    zipf = Zipf(100, 1.0)
    draws = [zipf.rank(i / 10_000) for i in range(10_000)]
    assert draws[0] == 0
    assert max(draws) == 99
    top = sum(1 for d in draws if d < 10) / len(draws)
    assert 0.55 < top < 0.6  # H(10)/H(100) = 2.93/5.19
    with pytest.raises(ValueError, match="at least one"):
        Zipf(0)


def test_playlists_are_read_with_absolute_uris() -> None:
    master = (
        "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=900000,RESOLUTION=640x360\n360p/index.m3u8\n"
        "#EXT-X-STREAM-INF:BANDWIDTH=300000,RESOLUTION=320x180\n180p/index.m3u8?token=t\n"
    )
    found = variants(master, "http://o/v/abc/master.m3u8")
    assert found == [
        Variant(300_000, "http://o/v/abc/180p/index.m3u8?token=t"),
        Variant(900_000, "http://o/v/abc/360p/index.m3u8"),
    ]
    text = (
        '#EXTM3U\n#EXT-X-TARGETDURATION:6\n#EXT-X-MAP:URI="init.mp4"\n'
        "#EXTINF:6.0,\nseg-1.m4s\n#EXTINF:2.5,\nseg-2.m4s\n#EXT-X-ENDLIST\n"
    )
    parsed = media(text, "http://o/v/abc/360p/index.m3u8")
    assert parsed.init == "http://o/v/abc/360p/init.mp4"
    assert parsed.segments == (
        (6.0, "http://o/v/abc/360p/seg-1.m4s"),
        (2.5, "http://o/v/abc/360p/seg-2.m4s"),
    )
    assert parsed.duration == pytest.approx(8.5)


EMAIL = "seeder@example.com"
PASSWORD = "plenty of segments 42"


def _gateway(root: Path) -> Settings:
    raw = msgspec.to_builtins(settings_for(root))
    # A catalog of its own: the run's shared one lists other tests' videos, whose files are
    # not in this library (their playlists would be 404s for the players).
    raw["catalog"]["url"] = f"sqlite:///{root.parent}/catalog.sqlite3"
    raw["auth"].update({"jwt_secret": "l" * 40, "password_cost": 4, "login_rate": "1000/minute"})
    raw["ingest"]["ladder"] = ["180p:180:300", "144p:144:150"]  # two variants, quickly made
    return msgspec.convert(raw, Settings)


def test_locust_smoke_run_has_no_failed_request(tmp_path: Path) -> None:
    if importlib.util.find_spec("locust") is None:
        require("locust", "pip install -e '.[load]'")  # fails in CI, skips elsewhere
    root = tmp_path / "library"
    root.mkdir()
    server = run_server(_gateway(root), tmp_path / "gateway.log")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        seed = subprocess.run(
            [sys.executable, "-m", "loadtests.seed", "--host", server.base, "--videos", "3",
             "--seconds", "8", "--height", "180", "--email", EMAIL, "--password", PASSWORD],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert seed.returncode == 0, seed.stdout + seed.stderr
        assert "3 videos seeded" in seed.stdout
        run = subprocess.run(
            [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests" / "locustfile.py"),
             "--headless",
             "--host", server.base, "-u", "8", "-r", "8", "-t", "20s", "--only-summary",
             "--csv", str(tmp_path / "load"), "--speedup", "20",
             "--upload-email", EMAIL, "--upload-password", PASSWORD],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        stop_server(server)
    report = run.stdout + run.stderr
    assert run.returncode == 0, report  # Locust exits 1 on any failed request
    with (tmp_path / "load_stats.csv").open() as handle:
        rows = {(r["Type"], r["Name"]): r for r in csv.DictReader(handle)}
    total = rows[("", "Aggregated")]
    assert int(total["Failure Count"]) == 0, report
    # Every user class did its work.
    for kind, name in [
        ("GET", "master playlist"),
        ("GET", "media playlist"),
        ("GET", "segment"),
        ("GET", "segment (CDN pull)"),
        ("GET", "/api/v1/videos"),
        ("GET", "/api/v1/search"),
        ("POST", "/api/v1/videos/[id]/views"),
        ("PATCH", "tus PATCH"),
        ("PLAYER", "time to first segment"),
    ]:
        assert int(rows[(kind, name)]["Request Count"]) > 0, (kind, name, report)
