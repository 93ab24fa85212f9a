"""OpenTelemetry traces from a real `clipsync serve`, exported over OTLP/HTTP to a collector
run by the test: one trace per request, with our spans (index build, packaging, storage reads)
and the instrumented SQLAlchemy and Redis calls under the request's server span."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from backends import tracing
from conf import Settings
from tests.conftest import settings_for
from tests.media import MediaLibrary
from tests.serving import run_server, stop_server

MEDIA = "h264_30fps_bframes"
SEGMENT = f"/vod/{MEDIA}.mp4/main/seg-3.m4s"
VOD = "/vod/{path:path}"
TOKEN = "v1.secret-playback-token.abcdef"  # must reach no span


class Collector:
    """An OTLP/HTTP trace receiver: every span it was sent, as plain dicts."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                with collector.lock:
                    for resource in request.resource_spans:
                        service = {
                            a.key: a.value.string_value for a in resource.resource.attributes
                        }.get("service.name")
                        for scoped in resource.scope_spans:
                            for span in scoped.spans:
                                collector.spans.append(
                                    {
                                        "name": span.name,
                                        "trace": span.trace_id.hex(),
                                        "id": span.span_id.hex(),
                                        "parent": span.parent_span_id.hex(),
                                        "service": service,
                                        "attributes": {
                                            a.key: a.value.string_value or a.value.int_value
                                            for a in span.attributes
                                        },
                                    }
                                )
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collector() -> Iterator[Collector]:
    receiver = Collector()
    yield receiver
    receiver.close()


def traced(root: Path, endpoint: str, redis_url: str, prefix: str) -> Settings:
    raw = msgspec.to_builtins(settings_for(root, {"redis_url": redis_url, "redis_prefix": prefix}))
    raw["tracing"] = {"enabled": True, "endpoint": endpoint, "service_name": "edge-test"}
    return msgspec.convert(raw, Settings)


def ancestors(span: dict[str, Any], by_id: dict[str, dict[str, Any]]) -> list[str]:
    names = []
    while span["parent"] and span["parent"] in by_id:
        span = by_id[span["parent"]]
        names.append(span["name"])
    return names


def test_a_cold_segment_is_one_trace_with_our_spans(
    media: MediaLibrary,
    tmp_path: Path,
    collector: Collector,
    shared_redis: str,
    redis_prefix: str,
) -> None:
    media.good(MEDIA)
    server = run_server(
        traced(media.root, collector.url, shared_redis, redis_prefix), tmp_path / "gateway.log"
    )
    try:
        with httpx.Client(base_url=server.base, timeout=30) as http:
            assert http.get(f"{SEGMENT}?token={TOKEN}").status_code == 200
            assert http.get("/api/v1/videos").status_code == 200
    finally:
        stop_server(server)  # the app's shutdown flushes the spans still batched
    spans = collector.spans
    by_id = {s["id"]: s for s in spans}
    names = {s["name"] for s in spans}
    assert {tracing.INDEX_BUILD, tracing.PACKAGING, tracing.STORAGE_READ} <= names, names
    assert all(s["service"] == "edge-test" for s in spans)

    packaging = next(s for s in spans if s["name"] == tracing.PACKAGING)
    assert packaging["attributes"]["format"] == "fmp4"
    # Under the request's server span (the ASGI instrumentation names it by method and route).
    lineage = ancestors(packaging, by_id)
    assert lineage, packaging
    assert lineage[-1] == f"GET {VOD} segment", lineage
    read = next(s for s in spans if s["name"] == tracing.STORAGE_READ)
    assert read["parent"] == packaging["id"]
    same_trace = [s for s in spans if s["trace"] == packaging["trace"]]
    # Redis (the cache tier looked there first) in the same trace as the packaging.
    assert any(s["attributes"].get("db.system") == "redis" for s in same_trace), same_trace

    assert TOKEN not in repr(spans)
    assert not any(s["name"].endswith(("http send", "http receive")) for s in spans)
    assert not any("/healthz" in s["name"] for s in spans)  # probes are not traced

    # The catalog API request: its SQL statements, in their own trace.
    sql = [
        s
        for s in spans
        if s["attributes"].get("db.system") == "sqlite" and "db.statement" in s["attributes"]
    ]
    assert sql, sorted({s["name"] for s in spans})
    assert all(s["trace"] != packaging["trace"] for s in sql)
    # Background loops (sweeps, webhook deliveries) query too, each in a trace of its own.
    listing = [s for s in sql if "GET /api/v1/videos" in ancestors(s, by_id)]
    assert listing, sorted({s["name"] for s in spans})


def test_tracing_without_the_extra_is_refused_clearly(media: MediaLibrary) -> None:
    """`clipsync serve` with tracing on, where OpenTelemetry is not installed: a clear error
    naming the extra, before anything starts."""
    media.good(MEDIA)
    hide = (
        "import sys; sys.modules['opentelemetry.sdk'] = None; "  # as if the extra were absent
        "from gateway.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPSYNC_")}
    env["CLIPSYNC_TRACING__ENABLED"] = "true"
    run = subprocess.run(
        [sys.executable, "-c", hide, "serve", "--library", str(media.root), "--port", "9"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2, run.stderr
    assert "tracing.enabled needs OpenTelemetry: pip install 'clipsync-edge[otel]'" in run.stderr
