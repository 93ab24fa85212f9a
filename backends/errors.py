"""Domain exceptions raised by the packager and the backends.

One table in ``gateway.errors`` maps each class to an HTTP status; nothing here knows HTTP.
"""

from __future__ import annotations


class ClipSyncError(Exception):
    """Base class: ``str(exc)`` is a message safe to show a client."""


class MediaNotFound(ClipSyncError):
    """The asset, rendition or file does not exist (or is outside the library root)."""


class BadMedia(ClipSyncError):
    """The file exists but is not usable media: not MP4, truncated, inconsistent tables."""


class UnsupportedMedia(BadMedia):
    """Well-formed media that this origin cannot package (codec, fragmented MP4, ...)."""


class MisalignedLadder(BadMedia):
    """Renditions of one asset do not share segment boundaries, so ABR switching would break."""


class NotFound(ClipSyncError):
    """A catalog object (video, comment, user) that does not exist or may not be seen."""


class InvalidRequest(ClipSyncError):
    """A request body or parameter that breaks the API's rules; the message says which."""


class RequestTooLarge(InvalidRequest):
    """A request body past the endpoint's limit."""


class Unauthorized(ClipSyncError):
    """No valid credentials where they are required."""


class Forbidden(ClipSyncError):
    """Valid credentials that do not allow this (someone else's video, a missing role)."""


class SegmentOutOfRange(ClipSyncError):
    """A segment number or URL that the plan of this asset does not contain."""


class StorageUnavailable(ClipSyncError):
    """The storage backend cannot answer now (timeout, throttling, refused connection)."""

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SourceChanged(StorageUnavailable):
    """The file was replaced between planning a read and doing it; a retry sees the new file."""

    def __init__(self, path: str) -> None:
        super().__init__(f"{path} changed while being read; retry", retry_after=1)


class Conflict(ClipSyncError):
    """The write contradicts what is stored (a taken email, a missing owner)."""


class CatalogUnavailable(ClipSyncError):
    """The catalog database cannot answer now (down, unreachable, schema not ready)."""


class TooManyRequests(ClipSyncError):
    """A rate limit or a sign-in lockout: 429, with when to try again."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = max(1, retry_after)
