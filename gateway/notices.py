"""Owner notices: what the processing pipeline announces about a video reaches its owner.

``OwnerNotices`` is the pipeline's ``Announcer``. Every event (``video.playable``,
``video.ready``, ``video.failed``) goes to the owner's webhook endpoints; ``video.ready`` and
``video.failed`` are also emailed, through the notifier that sends password-reset mail, to an
owner who asked for it (``PATCH /api/v1/auth/me {"notify_ready": true}``) and whose account is
not disabled.

Once per video and event: a ``notices_sent`` row is inserted before the email is sent (its
primary key refuses a second one) and deleted again if sending fails. A job run twice, or two
processes announcing the same event, mail once; an announcement after a failed send tries
again. A process that dies between the row and the send mails nothing (at most once).
"""

from __future__ import annotations

import logging
import unicodedata
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from sqlalchemy import and_, delete, insert
from sqlalchemy.exc import IntegrityError

from auth.notify import Mail, Notifier, NotifyError
from auth.notify import from_settings as notifier_from_settings
from backends.catalog import Catalog, schema
from backends.catalog.records import Video
from conf import Settings
from gateway.processing import Announcer

log = logging.getLogger("clipsync.notices")

MAILED: Final = frozenset({"video.ready", "video.failed"})
SUBJECT_TITLE: Final = 100  # characters of the title a subject shows


DATA = Path("data")  # where the mail outbox goes by default, beside the default catalog


def notifier_for(settings: Settings) -> Notifier:
    """The one notifier of a process: reset links and owner notices."""
    return notifier_from_settings(settings.mail, DATA)


def public_url(settings: Settings) -> str:
    """Where this gateway is reached from outside, for links in emails: ``auth.public_url``,
    else the server's own host and port."""
    server = settings.server
    return settings.auth.public_url.rstrip("/") or f"http://{server.host}:{server.port}"


def one_line(text: str, limit: int) -> str:
    """``text`` fit for a mail header: line breaks (CR, LF, U+2028 …) and other control
    characters become spaces, runs of spaces one, at most ``limit`` characters. A header with
    a line break in it would start another header (injection); the notifier refuses those."""
    spaced = "".join(
        " " if unicodedata.category(char) in ("Cc", "Zl", "Zp") else char for char in text
    )
    cleaned = " ".join(spaced.split())
    if len(cleaned) > limit:
        cleaned = cleaned[: limit - 1].rstrip() + "…"
    return cleaned or "(untitled)"


def compose(video: Video, event: str, to: str, base_url: str) -> Mail:
    """The email about ``event`` (``video.ready`` or ``video.failed``) of ``video``."""
    title = one_line(video.title, SUBJECT_TITLE)
    if event == "video.ready":
        subject = f"Your video “{title}” is ready"
        lines = [
            f"Your video “{title}” has been processed and is ready to watch.",
            "",
            f"Status: {video.status}",
            f"Playback: {base_url}/v/{video.id}/master.m3u8",
        ]
        if video.privacy == "private":
            lines.append(
                "The video is private: players need a signed URL "
                f"(POST {base_url}/api/v1/videos/{video.id}/playback)."
            )
    else:
        subject = f"Your video “{title}” could not be processed"
        lines = [
            f"Your video “{title}” could not be processed.",
            "",
            f"Status: {video.status}",
            f"Reason: {video.failure_reason or 'not given'}",
            f"Video: {base_url}/api/v1/videos/{video.id}",
            "",
            "The original you uploaded is kept.",
        ]
    lines += [
        "",
        "You get these emails because you asked for them. To stop them, send",
        f'PATCH {base_url}/api/v1/auth/me with {{"notify_ready": false}}.',
    ]
    return Mail(to=to, subject=subject, text="\n".join(lines) + "\n")


class OwnerNotices:
    """The pipeline's announcer: webhooks for every event, an email for the final ones."""

    def __init__(
        self, catalog: Catalog, hooks: Announcer, notifier: Notifier, base_url: str
    ) -> None:
        self.catalog = catalog
        self.hooks = hooks
        self.notifier = notifier
        self.base_url = base_url.rstrip("/")

    async def announce(self, video: Video, event: str) -> None:
        """Queue ``event`` for the owner's webhooks and, for ``video.ready`` and
        ``video.failed``, email an owner who opted in. Never raises: failures are logged."""
        try:
            await self.hooks.announce(video, event)
        except Exception:
            log.exception("webhook %s of video %s not queued", event, video.id)
        if event not in MAILED:
            return
        try:
            await self._mail(video, event)
        except NotifyError as exc:
            log.error("email about %s of video %s not sent: %s", event, video.id, exc)
        except Exception:
            log.exception("email about %s of video %s not sent", event, video.id)

    async def _mail(self, video: Video, event: str) -> None:
        owner = await self.catalog.get_user(video.owner_id)
        if owner is None or owner.disabled or not owner.notify_ready:
            return
        message = compose(video, event, owner.email, self.base_url)
        if not await self._claim(video.id, event):
            return  # mailed already (or being mailed right now), or the video is gone
        sent = False
        try:
            await self.notifier.send(message)
            sent = True
            log.info("emailed the owner of video %s about %s", video.id, event)
        finally:
            if not sent:  # a later announcement may try again
                await self._release(video.id, event)

    async def _claim(self, video_id: str, event: str) -> bool:
        n = schema.notices_sent
        try:
            async with self.catalog.engine.begin() as conn:
                await conn.execute(
                    insert(n).values(video_id=video_id, event=event, sent_at=datetime.now(UTC))
                )
        except IntegrityError:  # the primary key (sent), or the video's foreign key (deleted)
            return False
        return True

    async def _release(self, video_id: str, event: str) -> None:
        n = schema.notices_sent
        try:
            async with self.catalog.engine.begin() as conn:
                await conn.execute(
                    delete(n).where(and_(n.c.video_id == video_id, n.c.event == event))
                )
        except Exception:
            log.exception("video %s: the failed email about %s stays recorded", video_id, event)
