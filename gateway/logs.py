"""Logs on standard error: one JSON object per line (or plain text), each with the id of the
request being served, and never a token or password.

The request id lives in a context variable set by the access middleware (gateway/access.py), so
every line logged while a request is served carries it, whoever logs it. Secrets are scrubbed
from the formatted line as the last step: query tokens (``token=``, ``upload_token=``...),
``Authorization`` values, passwords in URLs and ``password`` fields, whatever logged them.
"""

from __future__ import annotations

import logging
import re
from contextvars import ContextVar
from typing import Any, Literal

from pythonjsonlogger.msgspec import MsgspecFormatter

REQUEST_ID: ContextVar[str | None] = ContextVar("clipsync_request_id", default=None)

# What a secret looks like in a logged line, and what stays of it.
_SECRETS: tuple[tuple[re.Pattern[str], str], ...] = (
    # ?token=..., &access_token=..., refresh_token=... in URLs, query strings and forms.
    (re.compile(r"(\b[A-Za-z_]*token=)[^&\s\"'#\\]+", re.I), r"\1***"),
    # Authorization: Bearer xyz / Basic xyz
    (re.compile(r"\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=-]+", re.I), r"\1\2***"),
    # Anything shaped like a JWT, wherever it appears.
    (re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), "***"),
    # scheme://user:password@host
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://[^/\s:@\"']*:)[^@\s\"'/]+@", re.I), r"\1***@"),
    # password=..., "password": "...", jwt_secret = ... (forms, JSON bodies, reprs; also with
    # the quotes escaped, as inside a JSON log line)
    (
        re.compile(
            r"(\b[a-z_]*(?:password|secret)(?:\\?[\"'])?\s*[:=]\s*(?:\\?[\"'])?)[^\"'&\s,})\\]+",
            re.I,
        ),
        r"\1***",
    ),
)


# A word each pattern above needs (lower case): a line holding none of them holds nothing to
# scrub. One lower() and a few substring searches cost ~2 us; the five scans cost ~60 us per
# access line, a sixth of a cached segment request.
_CLUES = ("token=", "bearer", "basic", "eyj", "://", "password", "secret")


def redact(text: str) -> str:
    """``text`` with every token, password and credential replaced by ``***``."""
    lowered = text.lower()
    if not any(clue in lowered for clue in _CLUES):
        return text
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class RequestContext(logging.Filter):
    """Adds ``request_id`` to every record (None outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


class JsonLines(MsgspecFormatter):  # msgspec: half the time of the json module's encoder
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class TextLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, "request_id", None) is None:
            record.request_id = "-"  # outside a request (JSON lines say null)
        return redact(super().format(record))


def dict_config(
    fmt: Literal["json", "text"], level: str = "INFO", access: bool = True
) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for the gateway and workers (granian takes it too)."""
    formatter: dict[str, Any]
    if fmt == "json":
        formatter = {
            "()": JsonLines,
            "fmt": "{levelname}{name}{message}",
            "style": "{",
            "rename_fields": {"levelname": "level", "name": "logger"},
            "timestamp": "ts",
        }
    else:
        formatter = {
            "()": TextLines,
            "fmt": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s",
        }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request": {"()": RequestContext}},
        "formatters": {"main": formatter},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "main",
                "filters": ["request"],
            }
        },
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            # granian's own loggers carry their handlers: send them through ours instead.
            "_granian": {"level": level, "handlers": ["stderr"], "propagate": False},
            "granian.access": {"level": "WARNING", "handlers": ["stderr"], "propagate": False},
            "clipsync.access": {"level": "INFO" if access else "WARNING"},
        },
    }
