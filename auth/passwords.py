"""Account passwords: bcrypt hashing off the event loop, the password policy, email normalisation.

bcrypt reads at most 72 bytes of its input (bcrypt 5 refuses more) and classic implementations
stop at the first NUL byte, so a long passphrase would silently lose its tail. Every password is
therefore pre-hashed: NFKC, UTF-8, HMAC-SHA256 under a fixed public label, base64 — 44 ASCII bytes
with no NUL, whatever the password. The label keeps a leaked database of plain SHA-256 hashes
from being tested directly against ours ("password shucking"). Changing any of these steps would
invalidate every stored hash: they are part of the stored format.

Hashing and checking cost ~250 ms at cost 12 and run in a worker thread (bcrypt releases the
GIL), so the event loop keeps serving segments meanwhile.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import re
import secrets
import unicodedata

import bcrypt

from backends.errors import InvalidRequest

DEFAULT_COST = 12
MIN_COST, MAX_COST = 4, 31  # what bcrypt accepts
MIN_PASSWORD_CHARS = 10
MAX_PASSWORD_CHARS = 256
MAX_EMAIL_CHARS = 254  # RFC 5321 path limit, minus the angle brackets
MAX_LOCAL_BYTES = 64  # RFC 5321 local-part limit

_PREHASH_LABEL = b"clipsync bcrypt prehash v1"
_BCRYPT_COST = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")
_DNS_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")

# A cost-12 hash of a random secret nobody kept: checking against it costs what checking a real
# account costs, and can never succeed.
DUMMY_HASH = "$2b$12$RthCFIFlsl/XdQPsJpNH.OucFQWkKFmy1XB5U6r8fxDXaNi4Y9J5."

# The most common passwords of public breach corpora (lowercase). Many are shorter than the
# minimum length and fail that rule first; they stay listed so the list can be read on its own.
COMMON_PASSWORDS = frozenset(
    {
        "000000", "0123456789", "0987654321", "111111", "1111111111", "121212", "123123",
        "123321", "1234", "12345", "123456", "1234567", "12345678", "123456789",
        "1234567890", "123456789a", "12345678910", "123456a", "123abc", "123qwe",
        "1q2w3e4r", "1q2w3e4r5t", "1q2w3e4r5t6y", "1qaz2wsx", "1qaz2wsx3edc", "654321",
        "666666", "7777777", "888888", "987654321", "a123456789", "aa123456", "abc123",
        "abcdefghij", "access", "admin", "admin12345", "administrator", "asdfghjkl",
        "asdfghjkl1", "azerty", "azertyuiop", "bailey", "baseball", "baseball1",
        "basketball", "batman", "changeme", "changeme123", "charlie", "chocolate",
        "computer", "dragon", "football", "football1", "freedom", "hello", "hello12345",
        "iloveyou", "iloveyou1", "iloveyou12", "internet", "jennifer", "jordan23",
        "letmein", "letmein123", "liverpool", "login", "master", "michael", "monkey",
        "mustang", "passw0rd", "password", "password!", "password1", "password12",
        "password123", "password1234", "passwordpassword", "princess", "qazwsx",
        "qazwsxedc", "qwerty", "qwerty123", "qwerty1234", "qwerty12345", "qwertyuiop",
        "qwertyuiop1", "shadow", "starwars", "sunshine", "superman", "trustno1",
        "welcome", "welcome1", "welcome123", "whatever", "zaq12wsx", "zxcvbnm",
        "zxcvbnm123",
    }
)  # fmt: skip


def _prehash(password: str) -> bytes:
    # surrogatepass: never raises, so a lone surrogate hashes (and fails policy) predictably.
    raw = unicodedata.normalize("NFKC", password).encode("utf-8", "surrogatepass")
    return base64.b64encode(hmac.digest(_PREHASH_LABEL, raw, hashlib.sha256))


def _hash(password: str, cost: int) -> str:
    return bcrypt.hashpw(_prehash(password), bcrypt.gensalt(rounds=cost)).decode("ascii")


def _check(password: str, hashed: str) -> bool:
    try:
        return bcrypt.checkpw(_prehash(password), hashed.encode("ascii"))
    except ValueError:  # includes UnicodeEncodeError
        return False  # not a bcrypt hash: nothing matches it


@functools.cache
def _dummy_hash(cost: int) -> str:
    if cost == DEFAULT_COST:
        return DUMMY_HASH
    return _hash(secrets.token_urlsafe(32), cost)  # other costs (tests) pay once, lazily


def _valid_cost(cost: int) -> int:
    if isinstance(cost, bool) or not MIN_COST <= cost <= MAX_COST:
        raise ValueError(f"bcrypt cost must be in {MIN_COST}..{MAX_COST}")
    return cost


async def hash_password(password: str, cost: int = DEFAULT_COST) -> str:
    """A bcrypt hash (``$2b$…``, 60 ASCII characters) of ``password``, salted afresh."""
    return await asyncio.to_thread(_hash, password, _valid_cost(cost))


async def check_password(password: str, hashed: str) -> bool:
    """Whether ``password`` matches ``hashed`` (at whatever cost it was made with). A malformed
    stored hash matches nothing."""
    return await asyncio.to_thread(_check, password, hashed)


async def burn_check(password: str, cost: int = DEFAULT_COST) -> bool:
    """Spend what a wrong password costs, for a login naming no account, so response time does
    not reveal which emails have accounts. Always False. ``cost`` is the configured cost."""
    await asyncio.to_thread(_burn, password, _valid_cost(cost))
    return False


def _burn(password: str, cost: int) -> None:
    _check(password, _dummy_hash(cost))


def needs_rehash(hashed: str, cost: int = DEFAULT_COST) -> bool:
    """Whether a stored hash should be replaced at the next successful login (cost changed)."""
    match = _BCRYPT_COST.fullmatch(hashed)
    return match is None or int(match.group(1)) != cost


def check_policy(password: str, email: str) -> None:
    """Raise InvalidRequest saying what is wrong with ``password`` for the account ``email``.

    Lengths count characters after NFKC, the form that gets hashed.
    """
    if len(password) > MAX_PASSWORD_CHARS:  # before NFKC, which can expand a string 18-fold
        raise InvalidRequest(f"password must be at most {MAX_PASSWORD_CHARS} characters")
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest("password contains characters that cannot be stored") from None
    text = unicodedata.normalize("NFKC", password)
    if len(text) < MIN_PASSWORD_CHARS:
        raise InvalidRequest(f"password must be at least {MIN_PASSWORD_CHARS} characters")
    if len(text) > MAX_PASSWORD_CHARS:
        raise InvalidRequest(f"password must be at most {MAX_PASSWORD_CHARS} characters")
    if len(set(text)) == 1:
        raise InvalidRequest("password must not be a single character repeated")
    lowered = text.lower()
    if lowered in COMMON_PASSWORDS:
        raise InvalidRequest("password is too common; choose another")
    address = unicodedata.normalize("NFKC", email.strip()).lower()
    local = address.partition("@")[0]
    # Containment only from 4 characters: a local part "jo" would otherwise veto half of all
    # passwords while protecting nothing.
    if (address and address in lowered) or (
        local and (lowered == local or (len(local) >= 4 and local in lowered))
    ):
        raise InvalidRequest("password must not contain your email address")


def _forbidden_in_email(char: str) -> bool:
    # Separators (Z*) and Other (C*: control, format such as zero-width joiners, surrogates,
    # private use, unassigned) have no place in an address a person types.
    return char.isspace() or unicodedata.category(char)[0] in "CZ"


def normalize_email(email: str) -> str:
    """The one spelling under which an email address is stored and looked up.

    Strip, NFKC, domain lowercased and IDNA-encoded to ASCII (stdlib ``idna`` codec). The local
    part is lowercased too: RFC 5321 lets a server treat it case-sensitively, but no real mail
    provider does, and two accounts for ``Ann@x.org`` and ``ann@x.org`` would be worse. Dots and
    ``+tags`` are kept (their meaning is provider-specific). This is a normaliser, not an RFC
    5322 parser: quoted local parts and address literals are refused, deliverability is
    proven by the confirmation mail. Raises InvalidRequest with the reason.
    """
    if len(email) > 4 * MAX_EMAIL_CHARS:  # before NFKC, which can expand a string 18-fold
        raise InvalidRequest("email address is too long")
    text = unicodedata.normalize("NFKC", email.strip())
    if text.count("@") != 1:
        raise InvalidRequest("email address must contain exactly one @")
    local, _, domain = text.partition("@")
    if not local or not domain:
        raise InvalidRequest("email address needs a name before the @ and a domain after it")
    if any(_forbidden_in_email(char) for char in text):
        raise InvalidRequest("email address must not contain spaces or control characters")
    local = local.lower()
    if len(local.encode("utf-8")) > MAX_LOCAL_BYTES:
        raise InvalidRequest("email address is too long before the @")
    try:
        ascii_domain = domain.lower().encode("idna").decode("ascii")
    except UnicodeError:
        raise InvalidRequest("email domain is not valid") from None
    if not all(_DNS_LABEL.fullmatch(label) for label in ascii_domain.split(".")):
        raise InvalidRequest("email domain is not valid")
    normalized = f"{local}@{ascii_domain}"
    if len(normalized) > MAX_EMAIL_CHARS:
        raise InvalidRequest("email address is too long")
    return normalized
