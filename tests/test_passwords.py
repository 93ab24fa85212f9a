"""Passwords: bcrypt round trips (cost 4 for speed), the policy table, email normalisation."""

from __future__ import annotations

import threading

import bcrypt
import pytest

from auth.passwords import (
    COMMON_PASSWORDS,
    DUMMY_HASH,
    burn_check,
    check_password,
    check_policy,
    hash_password,
    needs_rehash,
    normalize_email,
)
from backends.errors import InvalidRequest

FAST = 4


@pytest.mark.anyio
@pytest.mark.parametrize(
    "password",
    [
        pytest.param("correct horse battery staple", id="ascii"),
        pytest.param("pässwörd-ünïcödé", id="latin"),
        pytest.param("密码密码密码密码密码", id="cjk"),
        pytest.param("🔐" * 30, id="emoji-120-bytes"),
        pytest.param("x" * 73, id="73-bytes"),
        pytest.param("long passphrase " * 64, id="1kB"),
        pytest.param("nul\x00inside", id="nul"),
        pytest.param("", id="empty"),  # the policy refuses it; hashing must still work
        pytest.param("\ud800 lone surrogate", id="lone-surrogate"),
    ],
)
async def test_round_trip(password: str) -> None:
    hashed = await hash_password(password, cost=FAST)
    assert hashed.startswith("$2b$04$")
    assert len(hashed) == 60
    assert await check_password(password, hashed)
    assert not await check_password(password + "!", hashed)
    assert not await check_password("x" + password, hashed)


@pytest.mark.anyio
async def test_each_hash_has_its_own_salt() -> None:
    first, second = [await hash_password("same password", cost=FAST) for _ in range(2)]
    assert first != second
    assert await check_password("same password", first)
    assert await check_password("same password", second)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("stored", "attempt"),
    [
        pytest.param("a" * 72 + "1", "a" * 72 + "2", id="differs-after-72-bytes"),
        pytest.param("é" * 36 + "1", "é" * 36 + "2", id="differs-after-72-utf8-bytes"),
        pytest.param("a" * 500 + "1", "a" * 500, id="prefix-of-long"),
        pytest.param("abc\x00def", "abc", id="nul-does-not-truncate"),
        pytest.param("abc\x00def", "abc\x00xyz", id="differs-after-nul"),
        pytest.param("Password1234", "password1234", id="case-sensitive"),
    ],
)
async def test_no_truncation_no_collisions(stored: str, attempt: str) -> None:
    assert not await check_password(attempt, await hash_password(stored, cost=FAST))


@pytest.mark.anyio
async def test_unicode_is_normalized_before_hashing() -> None:
    composed, decomposed = "caf\u00e9 au lait!", "cafe\u0301 au lait!"
    assert await check_password(decomposed, await hash_password(composed, cost=FAST))


@pytest.mark.anyio
@pytest.mark.parametrize(
    "stored",
    ["", "not a hash", "$2b$04$short", "$2b$04$" + "é" * 53, "$1$abc$def", "x" * 60],
)
async def test_a_malformed_stored_hash_matches_nothing(stored: str) -> None:
    assert not await check_password("any password at all", stored)


@pytest.mark.anyio
@pytest.mark.parametrize("cost", [0, 3, 32, True])
async def test_cost_out_of_range(cost: int) -> None:
    with pytest.raises(ValueError, match="cost"):
        await hash_password("correct horse battery staple", cost=cost)
    with pytest.raises(ValueError, match="cost"):
        await burn_check("correct horse battery staple", cost=cost)


@pytest.mark.anyio
async def test_bcrypt_never_runs_on_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    loop_thread = threading.get_ident()
    seen: list[int] = []
    hashpw, checkpw = bcrypt.hashpw, bcrypt.checkpw

    def spy_hash(password: bytes, salt: bytes) -> bytes:
        seen.append(threading.get_ident())
        return hashpw(password, salt)

    def spy_check(password: bytes, hashed: bytes) -> bool:
        seen.append(threading.get_ident())
        return checkpw(password, hashed)

    monkeypatch.setattr(bcrypt, "hashpw", spy_hash)
    monkeypatch.setattr(bcrypt, "checkpw", spy_check)
    hashed = await hash_password("correct horse battery staple", cost=FAST)
    await check_password("correct horse battery staple", hashed)
    await burn_check("correct horse battery staple", cost=FAST)
    assert len(seen) >= 3
    assert loop_thread not in seen


@pytest.mark.anyio
@pytest.mark.parametrize(("cost", "prefix"), [(FAST, "$2b$04$"), (12, "$2b$12$")])
async def test_burn_check_costs_a_real_check_and_never_passes(
    monkeypatch: pytest.MonkeyPatch, cost: int, prefix: str
) -> None:
    checked: list[bytes] = []

    def always_matches(password: bytes, hashed: bytes) -> bool:
        checked.append(hashed)
        return True  # even then, an unknown account is never let in

    monkeypatch.setattr(bcrypt, "checkpw", always_matches)
    assert await burn_check("correct horse battery staple", cost=cost) is False
    assert len(checked) == 1
    assert checked[0].decode().startswith(prefix)  # same cost as the accounts' hashes


def test_the_dummy_hash_is_a_cost_12_bcrypt_hash() -> None:
    assert DUMMY_HASH.startswith("$2b$12$")
    assert not needs_rehash(DUMMY_HASH, 12)
    bcrypt.checkpw(b"x", DUMMY_HASH.encode())  # parses (the answer does not matter)


@pytest.mark.parametrize(
    ("hashed", "cost", "expected"),
    [
        ("$2b$12$" + "a" * 53, 12, False),
        ("$2b$10$" + "a" * 53, 12, True),
        ("$2b$13$" + "a" * 53, 12, True),
        ("$2a$12$" + "a" * 53, 12, False),
        ("$2b$04$" + "a" * 53, 4, False),
        ("$2b$12$" + "a" * 52, 12, True),  # truncated
        ("", 12, True),
        ("plaintext", 12, True),
    ],
)
def test_needs_rehash(hashed: str, cost: int, expected: bool) -> None:
    assert needs_rehash(hashed, cost) is expected


EMAIL = "Ann.Smith@Example.org"


@pytest.mark.parametrize(
    ("password", "email", "message"),
    [
        ("correct horse battery staple", EMAIL, None),
        ("Tr0ub4dor&3x", EMAIL, None),
        ("é" * 9 + "x", EMAIL, None),  # ten characters, twenty bytes
        ("\u00e9" + "abcdefgh", EMAIL, "at least 10"),
        ("e\u0301abcdefgh", EMAIL, "at least 10"),  # ten code points, nine after NFKC
        ("", EMAIL, "at least 10"),
        ("short", EMAIL, "at least 10"),
        ("x" * 9, EMAIL, "at least 10"),
        ("ab" * 128, EMAIL, None),  # exactly 256
        ("ab" * 128 + "c", EMAIL, "at most 256"),
        ("x" * 100_000, EMAIL, "at most 256"),
        ("\ufdfa" * 20, EMAIL, "at most 256"),  # 20 characters, 360 after NFKC
        ("a" * 10, EMAIL, "single character"),
        ("💩" * 12, EMAIL, "single character"),
        ("1111111111", EMAIL, "single character"),
        ("password123", EMAIL, "too common"),
        ("PassWord123", EMAIL, "too common"),
        ("qwertyuiop", EMAIL, "too common"),
        ("1234567890", EMAIL, "too common"),
        ("ann.smith", "ann.smith@example.org", "at least 10"),
        ("ann.smith1", EMAIL, "email"),
        ("Ann.Smith@Example.org", EMAIL, "email"),
        ("my name is ANN.SMITH ok", EMAIL, "email"),
        ("ann.smithers-rocks", "  ann.smithers-rocks@x.org ", "email"),
        ("bob-the-builder", "bob@x.org", None),  # a 3-char local part only vetoes equality
        ("bobbobbobbob", "bobbobbobbob@x.org", "email"),
        ("bob@example.com", "bob@example.com", "email"),  # a short local part, the whole address
        ("my bob@example.com!", "Bob@Example.com", "email"),
        ("\ud800 lone surrogate!", EMAIL, "cannot be stored"),
        ("no at sign in the email", "not-an-email", None),  # the email is checked elsewhere
    ],
)
def test_policy(password: str, email: str, message: str | None) -> None:
    if message is None:
        check_policy(password, email)
    else:
        with pytest.raises(InvalidRequest, match=message):
            check_policy(password, email)


def test_the_common_list_is_lowercase_and_about_a_hundred() -> None:
    assert 90 <= len(COMMON_PASSWORDS) <= 150
    assert all(p == p.lower() for p in COMMON_PASSWORDS)


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("ann@example.org", "ann@example.org"),
        ("  Ann.Smith+Tag@Example.ORG \n", "ann.smith+tag@example.org"),
        ("ANN@EXAMPLE.ORG", "ann@example.org"),
        ("ann@bücher.de", "ann@xn--bcher-kva.de"),
        ("ann@BÜCHER.de", "ann@xn--bcher-kva.de"),
        ("ann@xn--bcher-kva.de", "ann@xn--bcher-kva.de"),
        ("Jörg@example.org", "jörg@example.org"),  # internationalised local parts are kept
        ("ｊｏｅ＠ｅｘａｍｐｌｅ．ｏｒｇ", "joe@example.org"),  # fullwidth: NFKC
        ("jo\u0065\u0301@example.org", "jo\u00e9@example.org"),  # decomposed: NFKC
        ("a@b", "a@b"),
        ("o'brien@sub.example.co.uk", "o'brien@sub.example.co.uk"),
        ("a" * 64 + "@example.org", "a" * 64 + "@example.org"),
        ("a@" + ".".join(["b" * 63] * 3) + "." + "c" * 60, None),  # 254: fits exactly
    ],
)
def test_normalize_email(raw: str, normalized: str | None) -> None:
    assert normalize_email(raw) == (normalized or raw)
    assert normalize_email(normalize_email(raw)) == normalize_email(raw)  # idempotent


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("", "exactly one @"),
        ("   ", "exactly one @"),
        ("ann.example.org", "exactly one @"),
        ("ann@@example.org", "exactly one @"),
        ('"a@b"@example.org', "exactly one @"),
        ("ann@ex@ample.org", "exactly one @"),
        ("ann＠example.org＠x", "exactly one @"),  # a fullwidth @ counts after NFKC
        ("@example.org", "name before the @"),
        ("ann@", "name before the @"),
        ("@", "name before the @"),
        ("ann smith@example.org", "spaces or control"),
        ("ann@exa mple.org", "spaces or control"),
        ("ann\t@example.org", "spaces or control"),
        ("ann\x00@example.org", "spaces or control"),
        ("ann\x7f@example.org", "spaces or control"),
        ("ann\u200d@example.org", "spaces or control"),  # zero-width joiner
        ("ann\u00a0x@example.org", "spaces or control"),  # NFKC turns it into a space
        ("ann\u2028@example.org", "spaces or control"),
        ("ann@example.org.", "domain is not valid"),
        ("ann@.example.org", "domain is not valid"),
        ("ann@example..org", "domain is not valid"),
        ("ann@exa_mple.org", "domain is not valid"),
        ("ann@-example.org", "domain is not valid"),
        ("ann@example-.org", "domain is not valid"),
        ("ann@[192.0.2.1]", "domain is not valid"),
        ("ann@" + "b" * 64 + ".org", "domain is not valid"),
        ("ann@exam!ple.org", "domain is not valid"),
        ("a" * 65 + "@example.org", "before the @"),
        ("é" * 33 + "@example.org", "before the @"),  # 33 characters, 66 bytes
        ("a@" + ".".join(["b" * 63] * 3) + "." + "c" * 61, "too long"),  # 255
        ("a@" + "b" * 2000, "too long"),
        ("a" * 1017 + "@x.org", "too long"),  # refused before NFKC (which can expand 18-fold)
    ],
)
def test_normalize_email_refuses(raw: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        normalize_email(raw)
