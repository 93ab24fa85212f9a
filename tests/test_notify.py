"""Mail notifiers against a real SMTP server (aiosmtpd on 127.0.0.1), the outbox, URL parsing."""

from __future__ import annotations

import email
import email.policy
import socket
import stat
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from auth.notify import (
    Mail,
    NotifyError,
    OutboxNotifier,
    SmtpNotifier,
    SmtpTarget,
    build_message,
    display,
    from_settings,
    parse_smtp_url,
)
from conf import MailSettings
from tests.serving import free_port

USER = "mailer@clipsync.test"
PASSWORD = "s3cret-Pa55:w/rd"  # ':' and '/' must be percent-encoded in a URL
SENDER = "ClipSync <no-reply@clipsync.test>"
LINK = "https://clipsync.test/account/reset?token=Zm9vYmFyYmF6cXV4LW9uZS10aW1l"
ANN, EVE = "ann@example.org", "eve@evil.example"
RESET = Mail(
    to="Ann Example <ann@example.org>",
    subject="Reset your ClipSync password",
    text=f"Someone asked to reset your password.\n\nOpen {LINK} within 30 minutes.\n",
)


class Collector:
    """aiosmtpd handler keeping what arrived; refuses @refused.example recipients and, when
    ``require_auth``, any MAIL before a successful AUTH (aiosmtpd's own ``auth_required``
    warns when TLS is not required too, and warnings are errors here)."""

    def __init__(self, require_auth: bool = False) -> None:
        self.require_auth = require_auth
        self.received: list[tuple[Envelope, Any]] = []

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.require_auth and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address.endswith("@refused.example"):
            return "550 5.1.1 No such mailbox here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.received.append((envelope, session.auth_data))
        return "250 Message accepted for delivery"


def authenticate(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
        USER.encode(),
        PASSWORD.encode(),
    )
    # handled=False: aiosmtpd then answers 535 itself (True means "I replied already").
    return AuthResult(success=ok, handled=False, auth_data=data if ok else None)


def serve(collector: Collector, **smtp: Any) -> Iterator[tuple[int, Collector]]:
    # server_hostname: otherwise aiosmtpd asks socket.getfqdn() for its greeting name.
    controller = Controller(
        collector, hostname="127.0.0.1", port=free_port(), server_hostname="localhost", **smtp
    )
    controller.start()
    try:
        yield controller.port, collector
    finally:
        controller.stop()


@pytest.fixture
def smtp_server() -> Iterator[tuple[int, Collector]]:
    yield from serve(Collector())


@pytest.fixture
def auth_server() -> Iterator[tuple[int, Collector]]:
    yield from serve(
        Collector(require_auth=True), authenticator=authenticate, auth_require_tls=False
    )


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def body(message: EmailMessage, subtype: str = "plain") -> str:
    part = message.get_body((subtype,))
    assert isinstance(part, EmailMessage)
    text = part.get_content()
    assert isinstance(text, str)
    return text.replace("\r\n", "\n")  # the wire has CRLF; the parser keeps it in bodies


# --- SMTP ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_message_arrives(smtp_server: tuple[int, Collector]) -> None:
    port, collector = smtp_server
    notifier = from_settings(
        MailSettings(smtp_url=f"smtp://127.0.0.1:{port}", sender=SENDER), Path("unused")
    )
    assert isinstance(notifier, SmtpNotifier)
    await notifier.send(RESET)
    await notifier.close()

    [(envelope, login)] = collector.received
    assert login is None
    assert envelope.mail_from == "no-reply@clipsync.test"
    assert envelope.rcpt_tos == ["ann@example.org"]
    assert isinstance(envelope.content, bytes)
    message = parse(envelope.content)
    assert message["From"] == SENDER
    assert message["To"] == RESET.to
    assert message["Subject"] == RESET.subject
    assert message["Date"] is not None
    assert message["Message-ID"].endswith("@clipsync.test>")
    assert body(message) == RESET.text


@pytest.mark.anyio
async def test_unicode_subject_and_html_alternative(smtp_server: tuple[int, Collector]) -> None:
    port, collector = smtp_server
    notifier = SmtpNotifier(SmtpTarget(host="127.0.0.1", port=port), SENDER)
    mail = Mail(
        to="zoe@example.org",
        subject="Réinitialiser votre mot de passe — ClipSync",
        text=f"Bonjour Zoë,\n{LINK}\n",
        html=f'<p>Bonjour Zoë, <a href="{LINK}">réinitialiser</a></p>',
    )
    await notifier.send(mail)
    [(envelope, _)] = collector.received
    assert isinstance(envelope.content, bytes)
    message = parse(envelope.content)
    assert message["Subject"] == mail.subject
    assert body(message) == mail.text
    assert body(message, "html") == f"{mail.html}\n"


@pytest.mark.anyio
async def test_auth_with_percent_encoded_credentials(auth_server: tuple[int, Collector]) -> None:
    port, collector = auth_server
    url = f"smtp://mailer%40clipsync.test:s3cret-Pa55%3Aw%2Frd@127.0.0.1:{port}"
    notifier = from_settings(MailSettings(smtp_url=url, sender=SENDER), Path("unused"))
    await notifier.send(RESET)
    [(envelope, login)] = collector.received
    assert login == LoginPassword(USER.encode(), PASSWORD.encode())
    assert envelope.rcpt_tos == ["ann@example.org"]


@pytest.mark.anyio
async def test_wrong_password_is_a_clear_error_without_the_password(
    auth_server: tuple[int, Collector],
) -> None:
    port, collector = auth_server
    wrong = "Wr0ng-but-secret"
    target = SmtpTarget(host="127.0.0.1", port=port, username=USER, password=wrong)
    with pytest.raises(NotifyError, match="refused the login") as caught:
        await SmtpNotifier(target, SENDER).send(RESET)
    assert "535" in str(caught.value)
    assert wrong not in str(caught.value)
    assert wrong not in repr(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__
    assert collector.received == []


@pytest.mark.anyio
async def test_no_credentials_where_auth_is_required(auth_server: tuple[int, Collector]) -> None:
    port, _ = auth_server
    notifier = SmtpNotifier(SmtpTarget(host="127.0.0.1", port=port), SENDER)
    with pytest.raises(NotifyError, match=r"refused the sender .*: 530"):
        await notifier.send(RESET)


@pytest.mark.anyio
async def test_refused_recipient(smtp_server: tuple[int, Collector]) -> None:
    port, collector = smtp_server
    notifier = SmtpNotifier(SmtpTarget(host="127.0.0.1", port=port), SENDER)
    mail = Mail(to="nobody@refused.example", subject="Reset", text=LINK)
    with pytest.raises(NotifyError, match=r"refused the recipient 'nobody@refused.example': 550"):
        await notifier.send(mail)
    assert collector.received == []


@pytest.mark.anyio
async def test_connection_refused_fails_fast() -> None:
    port = free_port()  # nothing listens there
    target = SmtpTarget(host="127.0.0.1", port=port, username=USER, password=PASSWORD)
    started = time.monotonic()
    with pytest.raises(NotifyError, match=f"cannot connect to SMTP server 127.0.0.1:{port}") as e:
        await SmtpNotifier(target, SENDER, timeout=5.0).send(RESET)
    assert time.monotonic() - started < 2.0
    assert PASSWORD not in str(e.value)


@pytest.mark.anyio
async def test_silent_server_times_out() -> None:
    # The kernel completes the handshake into the backlog; nobody ever sends a greeting.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        notifier = SmtpNotifier(SmtpTarget(host="127.0.0.1", port=port), SENDER, timeout=0.3)
        started = time.monotonic()
        with pytest.raises(NotifyError, match=r"did not answer within 0\.3 s"):
            await notifier.send(RESET)
        assert time.monotonic() - started < 2.0


@pytest.mark.anyio
@pytest.mark.parametrize(
    "mail",
    [
        pytest.param(Mail(to=f"{ANN}\r\nBcc: {EVE}", subject="x", text="x"), id="to-crlf"),
        pytest.param(Mail(to=f"{ANN}\nBcc: {EVE}", subject="x", text="x"), id="to-lf"),
        pytest.param(Mail(to=ANN, subject=f"Reset\r\nBcc: {EVE}", text="x"), id="subject-crlf"),
        pytest.param(Mail(to=ANN, subject="Reset\rX-Evil: 1", text="x"), id="subject-cr"),
        pytest.param(Mail(to=ANN, subject="Reset\u2028X-Evil: 1", text="x"), id="subject-u2028"),
    ],
)  # fmt: skip
async def test_header_injection_refused_before_connecting(mail: Mail, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="line breaks"):
        build_message(mail, SENDER)
    # Port 1 would refuse the connection: a ValueError proves nothing was attempted.
    with pytest.raises(ValueError, match="line breaks"):
        await SmtpNotifier(SmtpTarget(host="127.0.0.1", port=1), SENDER).send(mail)
    with pytest.raises(ValueError, match="line breaks"):
        await OutboxNotifier(tmp_path, SENDER).send(mail)
    assert not any(tmp_path.iterdir())  # noqa: ASYNC240 (a test's tmp_path)


@pytest.mark.parametrize(
    "to",
    ["", "ann", "ann@", "@example.org", "ann@example.org, eve@evil.example", "<ann@example.org>x",
     "undisclosed-recipients:;"],
)  # fmt: skip
def test_recipient_must_be_one_address(to: str) -> None:
    with pytest.raises(ValueError, match="exactly one address"):
        build_message(Mail(to=to, subject="x", text="x"), SENDER)


def test_bad_sender_refused_at_startup(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="From must be exactly one address"):
        from_settings(MailSettings(sender="ClipSync"), tmp_path)
    with pytest.raises(ValueError, match="From must not contain line breaks"):
        from_settings(MailSettings(smtp_url="smtp://h", sender="a@b.c\nBcc: e@f.g"), tmp_path)


# --- outbox -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_outbox_writes_a_parseable_eml(tmp_path: Path) -> None:
    notifier = from_settings(MailSettings(sender=SENDER), tmp_path)
    assert isinstance(notifier, OutboxNotifier)
    await notifier.send(RESET)
    await notifier.send(RESET)
    await notifier.close()

    files = sorted((tmp_path / "outbox").iterdir())
    assert len(files) == 2  # distinct names, no temp files left behind
    for path in files:
        assert path.suffix == ".eml"
        assert path.name[:9].rstrip("T").isdigit()  # 20260101T...
        assert stat.S_IMODE(path.stat().st_mode) == 0o600  # a reset link is a credential
        raw = path.read_bytes()
        assert b"\n" not in raw.replace(b"\r\n", b"")  # RFC 5322: CRLF line ends only
        message = parse(raw)
        assert message["From"] == SENDER
        assert message["To"] == RESET.to
        assert message["Subject"] == RESET.subject
        assert LINK in body(message)


@pytest.mark.anyio
async def test_outbox_folder_from_settings(tmp_path: Path) -> None:
    outbox = tmp_path / "mail" / "dev"
    notifier = from_settings(MailSettings(outbox=str(outbox)), tmp_path / "data")
    await notifier.send(RESET)
    assert len(list(outbox.glob("*.eml"))) == 1
    assert not (tmp_path / "data").exists()


@pytest.mark.anyio
async def test_outbox_unwritable_is_a_notify_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(NotifyError, match="cannot write to the outbox"):
        await OutboxNotifier(blocker / "outbox", SENDER).send(RESET)


# --- URLs ---------------------------------------------------------------------------------

T = SmtpTarget


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("smtp://mail.example.org", T(host="mail.example.org", port=25)),
        ("smtp://mail.example.org/", T(host="mail.example.org", port=25)),
        ("SMTP://Mail.Example.org:2525", T(host="mail.example.org", port=2525)),
        ("smtps://mail.example.org", T(host="mail.example.org", port=465, tls="implicit")),
        ("smtp+starttls://mail.example.org", T(host="mail.example.org", port=587, tls="starttls")),
        ("smtp://user:pass@host:587", T(host="host", port=587, username="user", password="pass")),
        ("smtps://a%40b.c:p%3A%2F%3F%23%40%25@host",
         T(host="host", port=465, username="a@b.c", password="p:/?#@%", tls="implicit")),
        ("smtp://user:p@ss@host", T(host="host", port=25, username="user", password="p@ss")),
        ("smtp://user:@host", T(host="host", port=25, username="user", password="")),
        ("smtp://user:p%C3%A4ss@host", T(host="host", port=25, username="user", password="päss")),
        ("smtp://user:pa+ss@host", T(host="host", port=25, username="user", password="pa+ss")),
        ("smtp://[::1]:2525", T(host="::1", port=2525)),
    ],
)  # fmt: skip
def test_parse_smtp_url(url: str, expected: SmtpTarget) -> None:
    assert parse_smtp_url(url) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "empty"),
        ("http://host", "scheme must be"),
        ("smtp+ssl://host", "scheme must be"),
        ("mail.example.org", "scheme must be"),
        ("smtp://", "no host"),
        ("smtp://user:hunter2@", "no host"),
        ("smtp://user:hunter2@:25", "no host"),
        ("smtp://host:0", "port must be"),
        ("smtp://user:hunter2@host:99999", "malformed"),
        ("smtp://user:hunter2@host:smtp", "malformed"),
        ("smtp://user:hunter2@[::1", "malformed"),
        ("smtp://user:hunter2@host/path", "path, query or fragment"),
        ("smtp://host?timeout=3", "path, query or fragment"),
        ("smtp://host#x", "path, query or fragment"),
        ("smtp://user:hun/ter2@host", "malformed"),  # '/' cuts the netloc: port "hun"
        ("smtp://user:hun#ter2@host", "malformed"),  # '#' cuts the netloc: "ter2@host" fragment
        ("smtp://user:hunter2%FF@host", "malformed"),  # not UTF-8 once decoded
        ("smtp://user:hunter2@host\r\n", "control characters"),
        ("smtp://user:hunter 2@host", "control characters"),
        ("smtp://:hunter2@host", "password but no user name"),
        ("smtp://user@host", "user name but no password"),
    ],
)
def test_parse_smtp_url_refuses(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        parse_smtp_url(url)
    for secret in ("hunter", "ter2"):
        assert secret not in str(caught.value)
    assert caught.value.__context__ is None or caught.value.__suppress_context__
    assert display(url) in ("", "<invalid SMTP URL>")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("", ""),
        ("smtp://host", "smtp://host:25"),
        ("smtps://user:hunter2@host", "smtps://user:***@host:465"),
        ("smtp+starttls://a%40b.c:hunter2@host:2587", "smtp+starttls://a%40b.c:***@host:2587"),
        ("smtp://user:@[::1]", "smtp://user:***@[::1]:25"),
        ("smtp://user:hun/ter2@host", "<invalid SMTP URL>"),
    ],
)
def test_display_masks_the_password(url: str, shown: str) -> None:
    assert display(url) == shown


def test_reprs_mask_the_password() -> None:
    settings = MailSettings(smtp_url="smtps://user:hunter2@host")
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in repr(parse_smtp_url(settings.smtp_url))
    notifier = from_settings(settings, Path())
    assert isinstance(notifier, SmtpNotifier)
    assert "hunter2" not in repr(notifier.target)


def test_outbox_default_folder(tmp_path: Path) -> None:
    notifier = from_settings(MailSettings(), tmp_path)
    assert isinstance(notifier, OutboxNotifier)
    assert notifier.folder == tmp_path / "outbox"
    assert not notifier.folder.exists()  # created at the first send, not at startup
