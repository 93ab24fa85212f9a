"""The API's endpoint table: one list drives both the routes and the OpenAPI 3.1 document, so
the document cannot drift from what is served."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from html import escape
from typing import Any, Literal

import msgspec
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from gateway.api import http
from gateway.api.models import Problem

Handler = Callable[[Request], Awaitable[Response]]
Auth = Literal["none", "optional", "required"]
PREFIX = "/api/v1"


@dataclass(frozen=True)
class Param:
    name: str
    where: Literal["path", "query"]
    schema: dict[str, Any]
    description: str = ""


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # under PREFIX, Starlette syntax: /videos/{video_id}
    summary: str
    handler: Handler
    response: Any = None  # a struct type, or None for an empty body
    status: int = 200
    body: Any = None
    auth: Auth = "none"
    params: tuple[Param, ...] = ()
    errors: tuple[int, ...] = field(default=(400,))
    # A text/event-stream response instead of JSON: (event name, data struct) of each event.
    events: tuple[tuple[str, Any], ...] = ()


def routes(endpoints: list[Endpoint]) -> list[Route]:
    by_path: dict[str, dict[str, Handler]] = {}
    for e in endpoints:
        by_path.setdefault(e.path, {})[e.method] = http.guarded(e.handler)
    out = []
    for path, methods in by_path.items():

        async def dispatch(request: Request, methods: dict[str, Handler] = methods) -> Response:
            return await methods[request.method](request)

        out.append(Route(PREFIX + path, dispatch, methods=list(methods)))
    return out


_REASONS = {
    400: "Bad request: the detail names the field",
    401: "No valid access token",
    403: "Not allowed for this user",
    404: "No such object (or not visible to this caller)",
    409: "Conflicts with what is stored",
    413: "Body too large",
    429: "Too many requests or failed sign-ins: wait Retry-After seconds",
    503: "The catalog cannot answer now; retry",
}


def _operation_id(e: Endpoint) -> str:
    words = e.path.strip("/").replace("{", "").replace("}", "").replace("/", "_")
    return f"{e.method.lower()}_{words}"


def _event_schema(events: tuple[tuple[str, Any], ...], refs: dict[Any, Any]) -> dict[str, Any]:
    """One event of a stream (OpenAPI 3.1 has no itemSchema: the schema describes each event,
    as the fields of its lines); its data is a line of JSON."""
    return {
        "oneOf": [
            {
                "type": "object",
                "required": ["event", "data"],
                "properties": {
                    "event": {"const": name},
                    "id": {"type": "string"},
                    "retry": {"type": "integer"},
                    "data": {
                        "type": "string",
                        "contentMediaType": "application/json",
                        "contentSchema": refs[data],
                    },
                },
            }
            for name, data in events
        ]
    }


def document(endpoints: list[Endpoint]) -> dict[str, Any]:
    types = (
        {Problem}
        | {e.response for e in endpoints if e.response}
        | {e.body for e in endpoints if e.body}
        | {data for e in endpoints for _, data in e.events}
    )
    schemas, components = msgspec.json.schema_components(
        sorted(types, key=lambda t: t.__name__), ref_template="#/components/schemas/{name}"
    )
    refs = {t: s for t, s in zip(sorted(types, key=lambda t: t.__name__), schemas, strict=True)}
    problem = {"application/problem+json": {"schema": refs[Problem]}}
    paths: dict[str, dict[str, Any]] = {}
    for e in endpoints:
        responses: dict[str, Any] = {}
        if e.events:
            responses[str(e.status)] = {
                "description": e.summary,
                "content": {"text/event-stream": {"schema": _event_schema(e.events, refs)}},
            }
        elif e.response is None:
            responses[str(e.status)] = {"description": e.summary}
        else:
            responses[str(e.status)] = {
                "description": e.summary,
                "content": {"application/json": {"schema": refs[e.response]}},
            }
        statuses = set(e.errors) | {503}
        if e.auth == "required":
            statuses |= {401}
        for status in sorted(statuses):
            responses[str(status)] = {"description": _REASONS[status], "content": problem}
        operation: dict[str, Any] = {
            "summary": e.summary,
            "operationId": _operation_id(e),
            "responses": responses,
            "parameters": [
                {
                    "name": p.name,
                    "in": p.where,
                    "required": p.where == "path",
                    "schema": p.schema,
                    "description": p.description,
                }
                for p in e.params
            ],
        }
        if e.auth != "none":
            operation["security"] = [{"bearer": []}] + ([{}] if e.auth == "optional" else [])
        if e.body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": refs[e.body]}},
            }
        paths.setdefault(PREFIX + e.path, {})[e.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "ClipSync Edge API", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }


def docs_page(doc: dict[str, Any]) -> str:
    """A plain HTML page of the endpoints (no script: it works offline and behind strict CSPs)."""
    rows = []
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            statuses = ", ".join(op["responses"])
            rows.append(
                f"<tr><td><code>{method.upper()}</code></td><td><code>{escape(path)}</code></td>"
                f"<td>{escape(op['summary'])}</td><td>{statuses}</td></tr>"
            )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>ClipSync Edge API</title>"
        "<style>body{font-family:sans-serif;margin:2em}"
        "td{padding:.3em 1em;border-bottom:1px solid #ddd}</style></head>"
        "<body><h1>ClipSync Edge API v1</h1>"
        "<p>Machine-readable: <a href='/api/v1/openapi.json'>openapi.json</a> (OpenAPI 3.1). "
        "Errors are application/problem+json.</p><table><tr><th>method</th><th>path</th>"
        f"<th>what</th><th>statuses</th></tr>{''.join(rows)}</table></body></html>"
    )


def doc_routes(endpoints: list[Endpoint]) -> list[Route]:
    doc = document(endpoints)
    raw = msgspec.json.encode(doc)
    page = docs_page(doc)

    async def openapi(request: Request) -> Response:
        return Response(raw, media_type="application/json", headers={"cache-control": "no-cache"})

    async def docs(request: Request) -> Response:
        return HTMLResponse(page, headers={"cache-control": "no-cache"})

    return [
        Route(f"{PREFIX}/openapi.json", openapi, methods=["GET"]),
        Route(f"{PREFIX}/docs", docs, methods=["GET"]),
    ]
