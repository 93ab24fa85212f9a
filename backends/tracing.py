"""Optional OpenTelemetry traces: ``span(name)`` around our own steps, and the instrumentation
libraries for HTTP (ASGI), SQLAlchemy and redis-py.

Off by default and without the ``otel`` extra: ``span()`` is then a shared null context, so the
hot path pays one flag test. ``install()`` sets the process's tracer provider once (the
OpenTelemetry API allows one per process); the span names are the module's constants.
"""

from __future__ import annotations

import contextlib
import importlib.util
from typing import Any

from conf.settings import SettingsError, TracingSettings

STORAGE = "storage.call"  # one call to a remote store (op, backend)
STORAGE_READ = "storage.read"  # the reads of one segment (any backend)
INDEX_BUILD = "index.build"  # a source's moov parsed into an index and segment plan
PACKAGING = "segment.package"  # one segment written from its samples
MISSING = "tracing.enabled needs OpenTelemetry: pip install 'clipsync-edge[otel]'"

_tracer: Any = None  # an opentelemetry Tracer once installed
_NOTHING = contextlib.nullcontext()


def available() -> bool:
    return importlib.util.find_spec("opentelemetry.sdk") is not None


def enabled() -> bool:
    return _tracer is not None


def span(
    name: str, **attributes: str | int | float | bool
) -> contextlib.AbstractContextManager[Any]:
    """A span under the current one, or nothing when tracing is off."""
    if _tracer is None:
        return _NOTHING
    return _tracer.start_as_current_span(name, attributes=attributes)  # type: ignore[no-any-return]


def install(settings: TracingSettings, exporter: Any = None) -> bool:
    """Trace this process as ``settings`` say; ``exporter`` replaces OTLP (tests). True when
    tracing is on. Raises SettingsError when it is asked for without the otel extra."""
    global _tracer
    if not settings.enabled:
        return False
    if _tracer is not None:
        return True
    if not available():
        raise SettingsError(MISSING)
    from opentelemetry import trace
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = TracerProvider(
        resource=Resource.create({"service.name": settings.service_name}),
        sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
    )
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        otlp = OTLPSpanExporter(endpoint=settings.endpoint) if settings.endpoint else None
        provider.add_span_processor(BatchSpanProcessor(otlp or OTLPSpanExporter()))
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    RedisInstrumentor().instrument(tracer_provider=provider)
    _tracer = trace.get_tracer("clipsync")
    return True


def instrument_engine(engine: Any) -> None:
    """Spans for every statement of this SQLAlchemy (async) engine, when tracing is on."""
    if _tracer is None:
        return
    from opentelemetry import trace
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    # The instrumentation declares SQLAlchemy < 2.1; the engine events it listens to are the
    # same in 2.1 (tests/test_tracing.py checks the statements' spans arrive).
    SQLAlchemyInstrumentor().instrument(
        engine=getattr(engine, "sync_engine", engine),
        tracer_provider=trace.get_tracer_provider(),
        skip_dep_check=True,
    )


def name_request(method: str, route: str) -> None:
    """Give the request's server span its low-cardinality name: method and route template."""
    if _tracer is None:
        return
    from opentelemetry import trace

    span = trace.get_current_span()
    span.update_name(f"{method} {route}")
    span.set_attribute("http.route", route)


def provider() -> Any:
    from opentelemetry import trace

    return trace.get_tracer_provider()


def flush() -> None:
    if _tracer is None:
        return
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    force = getattr(provider, "force_flush", None)
    if force is not None:
        force()
