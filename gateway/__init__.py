"""ASGI app, routes, HTTP semantics and the CLI."""
