"""``clipsync ingest FILE``: upload a local file to a gateway over tus and follow its processing.

It talks to the gateway's public API as any creator's client would (sign in, create the video,
upload with tuspy, then the video's Server-Sent Events), so it works against a remote
deployment as well as a local one. An interrupted run resumes: a small state file remembers,
per gateway and file (path, size, modification time), the video and its upload URL.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import requests
from tqdm import tqdm
from tusclient.client import TusClient
from tusclient.exceptions import TusCommunicationError, TusUploadFailed
from tusclient.uploader.uploader import Uploader

TERMINAL = ("ready", "failed")
TIMEOUT = 30.0  # seconds to connect and between bytes of an API answer


class IngestError(Exception):
    """Something the user must fix or retry (exit status 2); the message says what."""


@dataclass(frozen=True)
class Options:
    file: Path
    base: str  # the gateway's URL, e.g. http://127.0.0.1:8080
    title: str
    privacy: str
    token: str | None  # an access token, or sign in with email and password
    email: str | None
    password: str | None
    chunk_bytes: int
    wait: bool  # follow processing until ready or failed
    state: Path  # where interrupted uploads are remembered


class Api:
    """The gateway's JSON API with a bearer token, renewed by the refresh token on a 401."""

    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")
        self.http = requests.Session()
        self.refresh_token: str | None = None
        self.on_token: Callable[[str], None] = lambda token: None

    def sign_in(self, token: str | None, email: str | None, password: str | None) -> None:
        if token:
            self._use(token)
            return
        if not (email and password):
            raise IngestError("sign in: give --token, or --email with a password")
        body = self._json("POST", "/api/v1/auth/login", {"email": email, "password": password})
        self.refresh_token = body["refresh_token"]
        self._use(body["access_token"])

    def _use(self, token: str) -> None:
        self.http.headers["authorization"] = f"Bearer {token}"
        self.on_token(token)

    def renew(self) -> bool:
        """A new access token from the refresh token (spent); False without one."""
        if self.refresh_token is None:
            return False
        body = self._json("POST", "/api/v1/auth/refresh", {"refresh_token": self.refresh_token})
        self.refresh_token = body["refresh_token"]
        self._use(body["access_token"])
        return True

    def call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            return self._json(method, path, body)
        except Unauthorized:
            if not self.renew():
                raise
            return self._json(method, path, body)

    def _json(self, method: str, path: str, body: Any = None) -> Any:
        try:
            r = self.http.request(method, self.base + path, json=body, timeout=TIMEOUT)
        except requests.RequestException as exc:
            raise IngestError(f"cannot reach the gateway at {self.base}: {exc}") from None
        if r.status_code == 401:
            raise Unauthorized(_problem(r))
        if r.status_code >= 400:
            raise IngestError(f"{method} {path}: {r.status_code} {_problem(r)}")
        return r.json() if r.content else None

    def events(self, video: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """The video's status events until the stream ends (the caller reconnects)."""
        url = f"{self.base}/api/v1/videos/{video}/events"
        for attempt in range(2):
            try:
                r = self.http.get(url, stream=True, timeout=(TIMEOUT, None))
            except requests.RequestException as exc:
                raise IngestError(f"cannot reach the gateway at {self.base}: {exc}") from None
            if r.status_code == 401 and attempt == 0 and self.renew():
                continue
            if r.status_code >= 400:
                raise IngestError(f"GET {url}: {r.status_code} {_problem(r)}")
            break
        with contextlib.closing(r):
            name, data = "message", ""
            for line in r.iter_lines(decode_unicode=True):
                if line == "":  # the end of one event
                    if data:
                        yield name, json.loads(data)
                    name, data = "message", ""
                elif line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("data:"):
                    data += line[5:].strip()


class Unauthorized(IngestError):
    pass


def _problem(r: requests.Response) -> str:
    """The gateway's problem detail, or the start of the body."""
    try:
        body = r.json()
    except ValueError:
        return r.text[:200]
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("title") or body)
    return str(body)


class Remembered:
    """Uploads under way, by gateway and file: a rerun resumes instead of starting over."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @staticmethod
    def key(base: str, file: Path) -> str:
        info = file.stat()
        return f"{base}|{file.resolve()}|{info.st_size}|{info.st_mtime_ns}"

    def _load(self) -> dict[str, dict[str, str]]:
        try:
            loaded = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return loaded if isinstance(loaded, dict) else {}

    def get(self, key: str) -> dict[str, str] | None:
        return self._load().get(key)

    def put(self, key: str, value: dict[str, str] | None) -> None:
        entries = self._load()
        if value is None:
            entries.pop(key, None)
        else:
            entries[key] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temp = self.path.with_suffix(".tmp")
        temp.write_text(json.dumps(entries, indent=1))
        temp.replace(self.path)


def run(options: Options, out: TextIO = sys.stdout) -> int:
    """Upload, then follow: 0 when the video is ready (or uploaded, without waiting), 1 when
    it failed (the reason is printed)."""
    file = options.file
    if not file.is_file():
        raise IngestError(f"{file}: no such file")
    if file.stat().st_size == 0:
        raise IngestError(f"{file}: the file is empty")
    api = Api(options.base)
    api.sign_in(options.token, options.email, options.password)
    remembered = Remembered(options.state)
    key = Remembered.key(api.base, file)
    video, status, url = _resumable(api, remembered.get(key))
    if video is None:
        video = _create(api, options)
        remembered.put(key, {"video": video})
    if status == "uploading":
        if url:
            print(f"resuming the upload of video {video}", file=out, flush=True)
        upload(api, options, video, url, lambda new: remembered.put(key, new))
    remembered.put(key, None)
    print(f"uploaded: video {video}", file=out, flush=True)
    if not options.wait:
        return 0
    return follow(api, video, out)


def _resumable(api: Api, known: dict[str, str] | None) -> tuple[str | None, str, str | None]:
    """What a rerun picks up: (video, its status, upload URL) of the file's earlier run, or
    (None, "uploading", None) for a new video."""
    if not known or "video" not in known:
        return None, "uploading", None
    try:
        video = api.call("GET", f"/api/v1/videos/{known['video']}")
    except IngestError:
        return None, "uploading", None  # deleted, or not ours any more: start over
    return str(video["id"]), str(video["status"]), known.get("url")


def _create(api: Api, options: Options) -> str:
    body = {"title": options.title, "privacy": options.privacy}
    return str(api.call("POST", "/api/v1/videos", body)["video"]["id"])


def upload(
    api: Api,
    options: Options,
    video: str,
    url: str | None,
    remember: Callable[[dict[str, str]], None],
) -> None:
    """The tus upload with a progress bar; resumes at ``url`` when given."""
    client = TusClient(f"{api.base}/api/v1/uploads")
    client.set_headers({"authorization": str(api.http.headers["authorization"])})
    api.on_token = lambda token: client.set_headers({"authorization": f"Bearer {token}"})
    metadata = {"video_id": video, "filename": options.file.name}
    uploader = _uploader(client, options, metadata, url or None)
    if uploader.url is None:
        uploader.set_url(_tus(api, uploader.create_url))
        remember({"video": video, "url": str(uploader.url)})
    size = options.file.stat().st_size
    with tqdm(total=size, initial=uploader.offset, unit="B", unit_scale=True, desc="upload") as bar:
        while uploader.offset < size:
            before = uploader.offset
            _tus(api, uploader.upload_chunk)
            bar.update(uploader.offset - before)


def _uploader(
    client: TusClient, options: Options, metadata: dict[str, str], url: str | None
) -> Uploader:
    try:
        return client.uploader(
            str(options.file),
            url=url,
            chunk_size=options.chunk_bytes,
            metadata=metadata,
            retries=3,
            retry_delay=2,
        )
    except TusCommunicationError as exc:
        if url is not None and exc.status_code in (404, 410):  # expired or terminated
            return _uploader(client, options, metadata, None)
        raise IngestError(f"upload: {_tus_problem(exc)}") from None


def _tus(api: Api, step: Callable[[], Any]) -> Any:
    """One tus request; a 401 renews the token once, other failures end the run."""
    for attempt in range(2):
        try:
            return step()
        except (TusCommunicationError, TusUploadFailed) as exc:
            status = getattr(exc, "status_code", None)
            if status == 401 and attempt == 0 and api.renew():
                continue
            raise IngestError(
                f"upload failed: {_tus_problem(exc)} (run the same command again to resume)"
            ) from None
    raise AssertionError("unreachable")


def _tus_problem(exc: TusCommunicationError | TusUploadFailed) -> str:
    content = exc.response_content or b""
    try:
        body = json.loads(content)
    except ValueError:
        body = content.decode(errors="replace")[:200]
    if isinstance(body, dict):
        body = body.get("detail") or body.get("title") or body
    status = getattr(exc, "status_code", None)
    return f"{status} {body}" if status else str(exc)


def follow(api: Api, video: str, out: TextIO) -> int:
    """Status and progress from the video's events until ready or failed."""
    seen = ""
    with tqdm(total=100, unit="%", desc="processing") as bar:
        while True:
            for name, event in api.events(video):
                if name == "gone":
                    bar.close()
                    print(f"video {video} was deleted", file=out, flush=True)
                    return 1
                if name != "status":
                    continue
                bar.update(max(0, int(event["progress"]) - bar.n))
                status = event["status"]
                if status != seen:
                    seen = status
                    bar.write(f"status: {status}", file=out)
                    if status in ("playable", "ready"):
                        bar.write(f"play: {play_url(api, video)}", file=out)
                if status == "failed":
                    bar.close()
                    print(f"failed: {event['failure_reason']}", file=out, flush=True)
                    return 1
                if status == "ready":
                    return 0


def play_url(api: Api, video: str) -> str:
    """The master playlist's URL; a private video's is signed (it works for hours)."""
    found = api.call("GET", f"/api/v1/videos/{video}")
    if found["privacy"] != "private":
        return f"{api.base}{found['playback_url']}"
    signed = str(api.call("POST", f"/api/v1/videos/{video}/playback", {})["url"])
    return signed if "://" in signed else api.base + signed
