"""Mail to users (password-reset links) through a pluggable notifier: SMTP, or an outbox folder.

``from_settings`` picks SMTP when ``smtp_url`` is set and otherwise writes each message as an
``.eml`` file into a local outbox, so ``clipsync serve`` with no mail server still lets a
developer open the reset link. Both build the same RFC 5322 message (``build_message``).

SMTP URLs::

    smtp://[user:password@]host[:25]            STARTTLS when the server offers it
    smtp+starttls://[user:password@]host[:587]  STARTTLS required
    smtps://[user:password@]host[:465]          TLS from the first byte

The password is a secret: no error message, repr or ``display`` ever shows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.policy
import logging
import os
import secrets
import unicodedata
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Literal, Protocol
from urllib.parse import quote, unquote, urlsplit

import aiosmtplib
import msgspec

from conf import MailSettings

log = logging.getLogger("clipsync.notify")

TlsMode = Literal["opportunistic", "starttls", "implicit"]

_SCHEMES: dict[str, tuple[TlsMode, int]] = {
    "smtp": ("opportunistic", 25),
    "smtp+starttls": ("starttls", 587),
    "smtps": ("implicit", 465),
}
_SCHEME_OF = {tls: scheme for scheme, (tls, _) in _SCHEMES.items()}
# aiosmtplib's start_tls: None = upgrade if offered, True = required, False = never.
_START_TLS: dict[TlsMode, bool | None] = {
    "opportunistic": None,
    "starttls": True,
    "implicit": False,
}
_MAX_REPLY_CHARS = 200


class NotifyError(Exception):
    """A message could not be delivered (or written); the message says why, never a password."""


class Mail(msgspec.Struct, frozen=True, kw_only=True):
    to: str  # one address: "ann@example.org" or "Ann <ann@example.org>"
    subject: str
    text: str
    html: str | None = None  # sent as an alternative part when set


class Notifier(Protocol):
    async def send(self, message: Mail) -> None: ...

    async def close(self) -> None: ...


class SmtpTarget(msgspec.Struct, frozen=True, kw_only=True):
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: TlsMode = "opportunistic"

    def __repr__(self) -> str:
        return f"SmtpTarget({_shown(self)!r})"


def parse_smtp_url(url: str) -> SmtpTarget:
    """The server, credentials and TLS mode an SMTP URL names; ValueError saying what is wrong.

    User name and password are percent-decoded. Messages never quote the URL: a password with
    an unencoded ``/``, ``?`` or ``#`` would otherwise spill into them as "path" or "port".
    """
    if not url:
        raise ValueError("SMTP URL is empty")
    # urlsplit silently drops tabs and line breaks; refuse them rather than guess.
    if any(char <= " " or char == "\x7f" for char in url):
        raise ValueError("SMTP URL must not contain spaces or control characters")
    hint = " (percent-encode / ? # in the user name or password)"
    try:
        parts = urlsplit(url)
        port = parts.port
        username = None if parts.username is None else unquote(parts.username, errors="strict")
        password = None if parts.password is None else unquote(parts.password, errors="strict")
    except ValueError:  # includes UnicodeDecodeError; its text may quote the password
        raise ValueError("SMTP URL is malformed" + hint) from None
    if parts.scheme not in _SCHEMES:
        raise ValueError("SMTP URL scheme must be smtp://, smtp+starttls:// or smtps://")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("SMTP URL must not have a path, query or fragment" + hint)
    if not parts.hostname:
        raise ValueError("SMTP URL has no host")
    if port == 0:
        raise ValueError("SMTP URL port must be from 1 to 65535")
    if password is not None and not username:
        raise ValueError("SMTP URL has a password but no user name")
    if username is not None and password is None:
        raise ValueError("SMTP URL has a user name but no password")
    tls, default_port = _SCHEMES[parts.scheme]
    return SmtpTarget(
        host=parts.hostname,
        port=port or default_port,
        username=username,
        password=password,
        tls=tls,
    )


def display(url: str) -> str:
    """``url`` fit for logs: password masked, port made explicit; a placeholder if invalid."""
    if not url:
        return ""
    try:
        return _shown(parse_smtp_url(url))
    except ValueError:
        return "<invalid SMTP URL>"


def _shown(target: SmtpTarget) -> str:
    user = ""
    if target.username is not None:
        user = quote(target.username, safe="") + (":***@" if target.password is not None else "@")
    return f"{_SCHEME_OF[target.tls]}://{user}{_host_port(target)}"


def _host_port(target: SmtpTarget) -> str:
    host = f"[{target.host}]" if ":" in target.host else target.host  # IPv6 literal
    return f"{host}:{target.port}"


def _single_line(name: str, value: str) -> str:
    # CR/LF would start a new header (injection); other controls and U+2028/9 confuse parsers.
    if any(unicodedata.category(char) == "Cc" or char in "\u2028\u2029" for char in value):
        raise ValueError(f"mail {name} must not contain line breaks or control characters")
    return value


def _one_address(name: str, value: str) -> Address:
    # The parser the message itself will use: whatever passes here is what gets sent.
    value = _single_line(name, value)
    try:
        header = email.policy.default.header_factory(name, value)
    except Exception:  # the stdlib parser raises IndexError and more on some malformed input
        header = None
    # Defects: the parser's guesses at what a malformed address meant ("<a@b>x" -> a@b).
    addresses: tuple[Address, ...] = () if header is None or header.defects else header.addresses
    if len(addresses) != 1 or not addresses[0].username or not addresses[0].domain:
        raise ValueError(f"mail {name} must be exactly one address like ann@example.org")
    return addresses[0]


def build_message(mail: Mail, sender: str) -> EmailMessage:
    """``mail`` as an RFC 5322 message from ``sender``. ValueError for a header that would not
    be exactly one line (header injection) or an address that is not exactly one address."""
    from_address = _one_address("From", sender)
    _one_address("To", mail.to)
    message = EmailMessage()
    message["From"] = sender
    message["To"] = mail.to
    message["Subject"] = _single_line("subject", mail.subject)
    message["Date"] = format_datetime(datetime.now(UTC))
    # make_msgid() without a domain calls socket.getfqdn(): a blocking DNS lookup.
    message["Message-ID"] = make_msgid(domain=from_address.domain)
    message.set_content(mail.text)
    if mail.html is not None:
        message.add_alternative(mail.html, subtype="html")
    return message


class SmtpNotifier:
    """Delivers through an SMTP server, one connection per message.

    Password-reset mail is rare and bursty; a kept connection would be closed by the server's
    idle timeout between messages and need reconnect logic and a send lock. A fresh connection
    per message is simpler, has no shared state, and costs a round trip or two per reset.
    """

    def __init__(self, target: SmtpTarget, sender: str, timeout: float = 10.0) -> None:
        _one_address("From", sender)  # a bad sender fails at startup, not at the first reset
        self.target = target
        self.sender = sender
        self.timeout = timeout

    async def send(self, message: Mail) -> None:
        """Deliver ``message`` within ``timeout`` seconds in all; NotifyError if not accepted."""
        built = build_message(message, self.sender)  # ValueError before any connection
        target = self.target
        client = aiosmtplib.SMTP(
            hostname=target.host,
            port=target.port,
            username=target.username,
            password=target.password,
            use_tls=target.tls == "implicit",
            start_tls=_START_TLS[target.tls],
            timeout=self.timeout,  # per operation; asyncio.timeout bounds the whole exchange
        )
        try:
            async with asyncio.timeout(self.timeout):
                await client.connect()
                await client.send_message(built)
            # Accepted: a failing QUIT must not turn into an error (and a resent reset mail).
            with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                await client.quit()
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise NotifyError(self._explain(exc, message.to)) from None
        finally:
            client.close()
        log.info("mail sent through %s", _host_port(target))

    async def close(self) -> None:
        pass  # no connection outlives a send

    def _explain(self, exc: Exception, recipient: str) -> str:
        where = f"SMTP server {_host_port(self.target)}"
        # Order matters: aiosmtplib's timeout errors are also connection errors.
        if isinstance(exc, TimeoutError):
            return f"{where} did not answer within {self.timeout:g} s"
        if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
            return f"{where} refused the login of {self.target.username!r}: {self._reply(exc)}"
        if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
            return f"{where} refused the recipient {recipient!r}: {self._reply(exc.recipients[0])}"
        if isinstance(exc, aiosmtplib.SMTPRecipientRefused):
            return f"{where} refused the recipient {recipient!r}: {self._reply(exc)}"
        if isinstance(exc, aiosmtplib.SMTPSenderRefused):
            return f"{where} refused the sender {self.sender!r}: {self._reply(exc)}"
        if isinstance(exc, aiosmtplib.SMTPConnectResponseError):
            return f"{where} refused the connection: {self._reply(exc)}"
        if isinstance(exc, aiosmtplib.SMTPResponseException):
            return f"{where} refused the message: {self._reply(exc)}"
        if isinstance(exc, OSError):  # includes aiosmtplib's connect errors and TLS failures
            return f"cannot connect to {where}: {self._scrub(str(exc))}"
        return f"{where} failed: {self._scrub(str(exc))}"

    def _reply(self, exc: aiosmtplib.SMTPResponseException) -> str:
        return f"{exc.code} {self._scrub(exc.message)}"

    def _scrub(self, text: str) -> str:
        # Server replies are quoted for diagnosis; no server should echo a password, but a
        # misbehaving one must not get it into our logs either.
        text = text[:_MAX_REPLY_CHARS]
        password = self.target.password
        return text.replace(password, "***") if password else text


class OutboxNotifier:
    """Writes each message as ``<UTC time>-<random>.eml`` into a folder (no mail server needed).

    Files appear atomically (temp name, then ``os.replace``), so a watcher never reads half a
    message, and are readable by their owner only: a reset link is a credential.
    """

    def __init__(self, folder: Path, sender: str) -> None:
        _one_address("From", sender)
        self.folder = folder
        self.sender = sender

    async def send(self, message: Mail) -> None:
        data = build_message(message, self.sender).as_bytes(policy=email.policy.SMTP)  # CRLF
        try:
            path = await asyncio.to_thread(_write_new_file, self.folder, data)
        except OSError as exc:
            raise NotifyError(
                f"cannot write to the outbox {self.folder}: {exc.strerror or exc}"
            ) from None
        log.info("mail written to %s", path)

    async def close(self) -> None:
        pass


def _write_new_file(folder: Path, data: bytes) -> Path:
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    name = f"{datetime.now(UTC):%Y%m%dT%H%M%S.%fZ}-{secrets.token_hex(4)}.eml"
    final, temp = folder / name, folder / f".{name}.tmp"  # dot: hidden from "*.eml" globs
    # O_EXCL: never write into (or, below, delete) a file this call did not create.
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        # No fsync: this is a developer's outbox; atomicity matters, durability does not.
        with open(fd, "wb") as file:
            file.write(data)
        os.replace(temp, final)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return final


def from_settings(mail: MailSettings, data_folder: Path) -> Notifier:
    """SMTP when ``mail.smtp_url`` is set, else the outbox (``mail.outbox`` or
    ``data_folder/outbox``). ValueError for a bad URL or sender, at startup."""
    if mail.smtp_url:
        return SmtpNotifier(parse_smtp_url(mail.smtp_url), mail.sender, mail.timeout)
    folder = Path(mail.outbox) if mail.outbox else data_folder / "outbox"
    return OutboxNotifier(folder, mail.sender)
