"""Locust users for ClipSync Edge: viewers, CDN edges pulling from the origin, API clients and
uploaders. Pick them by tag (player, cdn, api, upload); loadtests/README.md has the commands.

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8080
    locust -f loadtests/locustfile.py --host http://127.0.0.1:8080 --headless -u 200 -r 20 \
        -t 5m --tags player --speedup 4

The catalogue is the gateway's public video list (fill it with `python -m loadtests.seed`).
Request names group URLs by kind ("segment", "media playlist", ...), not by video.
"""

from __future__ import annotations

import base64
import random
import sys
import tempfile
import time
import uuid
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

from gevent.lock import Semaphore
from locust import FastHttpUser, HttpUser, between, constant, events, tag, task
from locust.env import Environment
from locust.exception import StopUser

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtests.player import Media, Playback, Variant, Zipf, choose, estimate, media, variants

TUS = {"Tus-Resumable": "1.0.0"}
WORDS_FROM_TITLES = 3  # search terms taken from each catalogue title


@events.init_command_line_parser.add_listener
def _arguments(parser: Any) -> None:
    group = parser.add_argument_group("ClipSync Edge")
    group.add_argument(
        "--speedup",
        type=float,
        default=1.0,
        env_var="CLIPSYNC_LOAD_SPEEDUP",
        help="players watch this many times faster than real time (1: real time)",
    )
    group.add_argument(
        "--seek-probability",
        type=float,
        default=0.03,
        help="chance a player seeks after each segment",
    )
    group.add_argument(
        "--switch-probability",
        type=float,
        default=0.05,
        help="chance a player switches variant on its own (besides ABR) after each segment",
    )
    group.add_argument(
        "--catalogue", type=int, default=200, help="videos read from the gateway's list"
    )
    group.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of CDN popularity")
    group.add_argument("--upload-email", default="", env_var="CLIPSYNC_LOAD_EMAIL")
    group.add_argument("--upload-password", default="", env_var="CLIPSYNC_LOAD_PASSWORD")
    group.add_argument(
        "--upload-seconds", type=float, default=4.0, help="length of each generated upload"
    )
    group.add_argument(
        "--upload-chunk-kb", type=int, default=256, help="bytes per tus PATCH, in KB"
    )


# Shared by every user of this process: the catalogue and the playlists, read once.
_lock = Semaphore()
_catalogue: list[dict[str, Any]] = []
_segments: dict[str, list[str]] = {}
_upload: bytes | None = None


def _fire(env: Environment, name: str, milliseconds: float) -> None:
    """A custom statistic, shown beside the requests (type PLAYER)."""
    env.events.request.fire(
        request_type="PLAYER",
        name=name,
        response_time=milliseconds,
        response_length=0,
        exception=None,
        context={},
    )


def catalogue(user: FastHttpUser) -> list[dict[str, Any]]:
    with _lock:
        if not _catalogue:
            limit = user.environment.parsed_options.catalogue
            cursor: str | None = None
            while len(_catalogue) < limit:
                path = "/api/v1/videos?limit=100" + (f"&cursor={cursor}" if cursor else "")
                with user.client.get(path, name="catalogue (setup)", catch_response=True) as r:
                    if r.status_code != 200:
                        r.failure(f"the video list answered {r.status_code}")
                        break
                    page = r.json()
                playable = [v for v in page["items"] if v["status"] in ("playable", "ready")]
                _catalogue.extend(playable[: limit - len(_catalogue)])
                cursor = page.get("next_cursor")
                if not cursor:
                    break
        if not _catalogue:
            raise StopUser()  # nothing to play: seed the gateway first (loadtests/README.md)
        return _catalogue


class PlayerUser(FastHttpUser):
    """A viewer: master playlist, a variant chosen as an ABR player would from the measured
    throughput, then the segments in order, paced by its buffer; it sometimes seeks and
    sometimes switches variant. Reports time to first segment and stalls (type PLAYER)."""

    wait_time = constant(1)  # between two videos; within one, the buffer sets the pace

    @tag("player")
    @task
    def watch(self) -> None:
        options = self.environment.parsed_options
        video = random.choice(catalogue(self))
        started = time.monotonic()
        master_url = urljoin(self.host, video["playback_url"])
        r = self.client.get(master_url, name="master playlist")
        if r.status_code != 200 or r.text is None:
            return
        ladder = variants(r.text, master_url)
        if not ladder:
            return
        playlists: dict[int, Media] = {}
        index = choose(ladder, None)
        throughput: float | None = None
        playback = Playback(speed=options.speedup)
        need_init = True
        first = True  # the next segment is the first since the start or a seek
        k = 0
        while True:
            current = self._media(ladder, index, playlists)
            if current is None or k >= len(current.segments):
                break
            if need_init and current.init is not None:
                if self.client.get(current.init, name="init segment").status_code != 200:
                    return
                need_init = False
            duration, url = current.segments[k]
            begun = time.monotonic()
            r = self.client.get(url, name="segment")
            if r.status_code != 200 or r.content is None:
                return
            now = time.monotonic()
            throughput = estimate(throughput, len(r.content) * 8 / max(now - begun, 1e-4))
            stall = playback.add(duration, now)
            if first:
                _fire(self.environment, "time to first segment", (now - started) * 1000)
                first = False
            if stall:
                _fire(self.environment, "stall (media s x1000)", stall * 1000)
            k += 1
            wanted = choose(ladder, throughput)
            if random.random() < options.switch_probability:
                wanted = random.randrange(len(ladder))
            if wanted != index:
                index, need_init = wanted, True
            if random.random() < options.seek_probability and current.segments:
                k = random.randrange(len(current.segments))
                playback.seek()
                started, first = time.monotonic(), True
                continue
            time.sleep(playback.wait(time.monotonic()))
        _fire(self.environment, "stalled per video (media s x1000)", sum(playback.stalls) * 1000)

    def _media(self, ladder: list[Variant], index: int, known: dict[int, Media]) -> Media | None:
        if index not in known:
            r = self.client.get(ladder[index].uri, name="media playlist")
            if r.status_code != 200 or r.text is None:
                return None
            known[index] = media(r.text, ladder[index].uri)
        return known[index]


def segments_of(user: FastHttpUser, video: dict[str, Any]) -> list[str]:
    """Every init and media segment URL of a video's renditions (read once per process)."""
    key = str(video["id"])
    if key in _segments:
        return _segments[key]
    found: list[str] = []
    master = urljoin(user.host, video["playback_url"])
    r = user.client.get(master, name="playlists (CDN setup)")
    if r.status_code == 200 and r.text is not None:
        for variant in variants(r.text, master):
            m = user.client.get(variant.uri, name="playlists (CDN setup)")
            if m.status_code == 200 and m.text is not None:
                parsed = media(m.text, variant.uri)
                found += ([parsed.init] if parsed.init else []) + [u for _, u in parsed.segments]
    _segments[key] = found
    return found


class CdnOriginUser(FastHttpUser):
    """A CDN edge missing its cache: segments across the catalogue with Zipf popularity,
    revalidated with If-None-Match when it has seen them before (304 expected)."""

    wait_time = between(0.01, 0.1)

    def on_start(self) -> None:
        self.etags: dict[str, str] = {}
        self.zipf = Zipf(len(catalogue(self)), self.environment.parsed_options.zipf)

    @tag("cdn")
    @task
    def pull(self) -> None:
        videos = catalogue(self)
        urls = segments_of(self, videos[self.zipf.rank(random.random()) % len(videos)])
        if not urls:
            return
        url = random.choice(urls)
        known = self.etags.get(url)
        headers = {"If-None-Match": known} if known else {}
        name = "segment (CDN revalidation)" if known else "segment (CDN pull)"
        with self.client.get(url, headers=headers, name=name, catch_response=True) as r:
            if r.status_code == 304 and known:
                r.success()
            elif r.status_code == 200:
                etag = r.headers.get("etag")
                if not etag:
                    r.failure("a segment without an ETag")
                else:
                    self.etags[url] = etag
            else:
                r.failure(f"{r.status_code}")


class ApiUser(FastHttpUser):
    """A front end: the video list and its next page, search, a video's page, view beacons."""

    wait_time = between(0.5, 2.0)

    def on_start(self) -> None:
        videos = catalogue(self)
        titles = " ".join(str(v["title"]) for v in videos).split()
        self.words = sorted({w.strip(".,:;!?").lower() for w in titles if len(w) > 3}) or ["a"]

    @tag("api")
    @task(4)
    def browse(self) -> None:
        r = self.client.get("/api/v1/videos?limit=20", name="/api/v1/videos")
        cursor = r.json().get("next_cursor") if r.status_code == 200 else None
        if cursor and random.random() < 0.3:
            self.client.get(f"/api/v1/videos?limit=20&cursor={cursor}", name="/api/v1/videos")

    @tag("api")
    @task(3)
    def search(self) -> None:
        query = " ".join(random.sample(self.words, min(len(self.words), random.randint(1, 2))))
        self.client.get(f"/api/v1/search?q={query}", name="/api/v1/search")

    @tag("api")
    @task(3)
    def video(self) -> None:
        video = random.choice(catalogue(self))
        self.client.get(f"/api/v1/videos/{video['id']}", name="/api/v1/videos/[id]")

    @tag("api")
    @task(2)
    def views(self) -> None:
        video = random.choice(catalogue(self))
        session = uuid.uuid4().hex
        path = f"/api/v1/videos/{video['id']}/views"
        for event, watched in (("start", 0.0), ("progress", 10.0), ("complete", 5.0)):
            self.client.post(
                path,
                json={"session": session, "event": event, "watched": watched},
                name="/api/v1/videos/[id]/views",
            )


def generated_upload(seconds: float) -> bytes:
    """A small H.264/AAC MP4, made once per process by PyAV (the gateway validates uploads)."""
    global _upload
    with _lock:
        if _upload is None:
            from packager.synth import SynthSpec, write

            folder = Path(tempfile.mkdtemp(prefix="clipsync-load-"))
            spec = SynthSpec(
                duration=seconds, width=320, height=180, fps=Fraction(25), noise=8, faststart=True
            )
            _upload = write(folder / "upload.mp4", spec).read_bytes()
        return _upload


class UploaderUser(HttpUser):
    """A creator: a video created, then its file sent with tus in chunks; now and then the
    client "loses" its connection and asks the offset (HEAD) before going on, as resuming
    clients do. Needs an account: --upload-email and --upload-password."""

    wait_time = between(1.0, 5.0)

    def on_start(self) -> None:
        options = self.environment.parsed_options
        if not (options.upload_email and options.upload_password):
            raise StopUser()  # an uploader needs an account (python -m loadtests.seed makes one)
        body = {"email": options.upload_email, "password": options.upload_password}
        r = self.client.post("/api/v1/auth/login", json=body, name="/api/v1/auth/login")
        if r.status_code != 200:
            raise StopUser()
        self.auth = {"Authorization": f"Bearer {r.json()['access_token']}"}
        self.data = generated_upload(options.upload_seconds)

    @tag("upload")
    @task
    def upload(self) -> None:
        options = self.environment.parsed_options
        r = self.client.post(
            "/api/v1/videos",
            json={"title": f"load test {uuid.uuid4().hex[:8]}", "privacy": "private"},
            headers=self.auth,
            name="/api/v1/videos (create)",
        )
        if r.status_code != 201:
            return
        video = r.json()["video"]["id"]
        metadata = ",".join(
            f"{k} {base64.b64encode(v.encode()).decode()}"
            for k, v in (("video_id", video), ("filename", "upload.mp4"))
        )
        r = self.client.post(
            "/api/v1/uploads",
            headers={
                **self.auth,
                **TUS,
                "Upload-Length": str(len(self.data)),
                "Upload-Metadata": metadata,
            },
            name="tus create",
        )
        if r.status_code != 201:
            return
        url = urljoin(self.host, r.headers["location"])
        chunk = options.upload_chunk_kb * 1024
        offset = 0
        while offset < len(self.data):
            if offset and random.random() < 0.2:  # a resumed client asks where it stands
                head = self.client.head(url, headers={**self.auth, **TUS}, name="tus HEAD")
                if head.status_code != 200:
                    return
                offset = int(head.headers["upload-offset"])
            piece = self.data[offset : offset + chunk]
            with self.client.patch(
                url,
                data=piece,
                headers={
                    **self.auth,
                    **TUS,
                    "Upload-Offset": str(offset),
                    "Content-Type": "application/offset+octet-stream",
                },
                name="tus PATCH",
                catch_response=True,
            ) as r:
                if r.status_code != 204:
                    r.failure(f"{r.status_code}: {r.text[:200]}")
                    return
                offset = int(r.headers["upload-offset"])
