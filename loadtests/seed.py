"""Fill a gateway with generated videos for a load test.

    python -m loadtests.seed --host http://127.0.0.1:8080 --videos 20 \\
        --email seeder@example.com --password 'plenty of segments 42'

Signs in (registering the account first if it does not exist), encodes each video with PyAV
(moving test patterns with some noise, AAC tones: real H.264/AAC MP4s), uploads it with tus as
`clipsync ingest` does, and waits until every video plays (`--wait playable`) or has its whole
ladder (`--wait ready`, the default: players then have variants to switch between).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

from gateway.ingest_client import Api, IngestError, Options, upload
from packager.synth import SynthSpec, write

ADJECTIVES = [
    "quiet",
    "golden",
    "rapid",
    "hidden",
    "northern",
    "painted",
    "silver",
    "early",
    "lonely",
    "bright",
]
NOUNS = [
    "harbour",
    "valley",
    "festival",
    "garden",
    "station",
    "island",
    "market",
    "glacier",
    "canyon",
    "lantern",
]


def _account(api: Api, email: str, password: str) -> None:
    try:
        api.sign_in(None, email, password)
        return
    except IngestError:
        pass
    r = api.http.post(
        f"{api.base}/api/v1/auth/register", json={"email": email, "password": password}
    )
    if r.status_code != 201:
        raise IngestError(f"registering {email}: {r.status_code} {r.text[:300]}")
    api.sign_in(None, email, password)


def _title(rng: random.Random, n: int) -> str:
    return f"{rng.choice(ADJECTIVES).title()} {rng.choice(NOUNS)} {rng.choice(NOUNS)} {n}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", required=True, help="the gateway, e.g. http://127.0.0.1:8080")
    parser.add_argument("--videos", type=int, default=10)
    parser.add_argument("--email", default=os.environ.get("CLIPSYNC_LOAD_EMAIL", ""))
    parser.add_argument("--password", default=os.environ.get("CLIPSYNC_LOAD_PASSWORD", ""))
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each video")
    parser.add_argument("--height", type=int, default=720, help="source height (16:9)")
    parser.add_argument("--wait", choices=["playable", "ready", "none"], default="ready")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait in all")
    parser.add_argument("--seed", type=int, default=7, help="titles are drawn from this seed")
    args = parser.parse_args(argv)
    if not (args.email and args.password):
        parser.error("--email and --password (or CLIPSYNC_LOAD_EMAIL/_PASSWORD) are needed")
    rng = random.Random(args.seed)
    api = Api(args.host)
    try:
        _account(api, args.email, args.password)
        ids = []
        with tempfile.TemporaryDirectory(prefix="clipsync-seed-") as tmp:
            folder = Path(tmp)
            width = round(args.height * 16 / 9 / 2) * 2
            for n in range(1, args.videos + 1):
                spec = SynthSpec(
                    duration=args.seconds,
                    width=width,
                    height=args.height,
                    fps=Fraction(25),
                    noise=12,
                    faststart=True,
                )
                source = write(folder / f"seed-{n}.mp4", spec)
                title = _title(rng, n)
                body = {"title": title, "privacy": "public"}
                video = str(api.call("POST", "/api/v1/videos", body)["video"]["id"])
                options = Options(
                    file=source,
                    base=api.base,
                    title=title,
                    privacy="public",
                    token=None,
                    email=None,
                    password=None,
                    chunk_bytes=8 * 1024 * 1024,
                    wait=False,
                    state=folder / "state.json",
                )
                upload(api, options, video, None, lambda _: None)
                source.unlink()
                ids.append(video)
                print(f"{n}/{args.videos}: {title} -> video {video}", flush=True)
        if args.wait != "none":
            _wait(api, ids, args.wait, args.timeout)
    except IngestError as exc:
        print(f"seed: {exc}", file=sys.stderr)
        return 2
    print(f"{len(ids)} videos seeded on {args.host}", flush=True)
    return 0


def _wait(api: Api, ids: list[str], wanted: str, timeout: float) -> None:
    done = {"playable": ("playable", "ready"), "ready": ("ready",)}[wanted]
    deadline = time.monotonic() + timeout
    waiting = list(ids)
    while waiting:
        video = api.call("GET", f"/api/v1/videos/{waiting[0]}")
        if video["status"] == "failed":
            raise IngestError(f"video {waiting[0]} failed: {video['failure_reason']}")
        if video["status"] in done:
            waiting.pop(0)
            continue
        if time.monotonic() > deadline:
            raise IngestError(f"{len(waiting)} videos not {wanted} after {timeout:.0f} s")
        time.sleep(1.0)
    print(f"all {len(ids)} videos {wanted}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
