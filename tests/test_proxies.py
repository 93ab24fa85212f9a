"""The client's address behind trusted proxies: X-Forwarded-For is believed only from them,
read from the right; a client cannot spoof its way past per-address limits."""

from __future__ import annotations

from pathlib import Path

import httpx
import msgspec
import pytest

from backends.catalog import Catalog
from conf import Settings
from gateway.proxies import parse_trusted, real_client
from tests.conftest import serving, settings_for

pytestmark = pytest.mark.anyio

TRUSTED = parse_trusted(["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"])


@pytest.mark.parametrize(
    ("peer", "header", "client"),
    [
        ("203.0.113.9", None, "203.0.113.9"),  # no proxy
        ("203.0.113.9", "198.51.100.1", "203.0.113.9"),  # an untrusted peer cannot say
        ("10.1.2.3", None, "10.1.2.3"),  # a trusted peer that forwarded nothing
        ("10.1.2.3", "198.51.100.1", "198.51.100.1"),  # Ingress -> us
        ("10.1.2.3", "198.51.100.1, 192.0.2.7", "198.51.100.1"),  # CDN -> Ingress -> us
        ("10.1.2.3", "6.6.6.6, 198.51.100.1, 10.9.9.9", "198.51.100.1"),  # left part: spoofed
        ("10.1.2.3", "10.4.4.4, 10.5.5.5", "10.4.4.4"),  # all trusted: the left-most
        ("10.1.2.3", "198.51.100.1, not-an-ip", "10.1.2.3"),  # garbage ends the walk
        ("10.1.2.3", "198.51.100.1,10.5.5.5", "198.51.100.1"),  # no spaces
        ("2001:db8::1", "2001:db8:ffff::2, 2a00::1", "2a00::1"),  # IPv6
        ("10.1.2.3", " , ", "10.1.2.3"),
    ],
)
def test_the_client_is_the_first_untrusted_hop_from_the_right(
    peer: str, header: str | None, client: str
) -> None:
    assert real_client(peer, header, TRUSTED) == client


def test_no_trusted_proxies_means_the_header_is_ignored() -> None:
    assert real_client("10.1.2.3", "198.51.100.1", ()) == "10.1.2.3"


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "example.com", "", "10.0.0.1/8/8"])
def test_bad_trusted_entries_are_named(bad: str) -> None:
    with pytest.raises(ValueError, match="is not an IP address or network"):
        parse_trusted(["10.0.0.0/8", bad])


def _settings(root: Path, trusted: list[str]) -> Settings:
    raw = msgspec.to_builtins(settings_for(root, server={"trusted_proxies": trusted}))
    raw["auth"].update({"jwt_secret": "p" * 40, "password_cost": 4, "login_rate": "2/minute"})
    return msgspec.convert(raw, Settings)


async def _logins(http: httpx.AsyncClient, forwarded: list[str]) -> list[int]:
    body = {"email": "nobody@example.com", "password": "Wrong-password-1"}
    return [
        (
            await http.post("/api/v1/auth/login", json=body, headers={"x-forwarded-for": client})
        ).status_code
        for client in forwarded
    ]


async def test_per_address_limits_count_the_forwarded_client(
    catalog: Catalog, tmp_path: Path
) -> None:
    # The in-process client connects from 127.0.0.1: here, the trusted proxy.
    async with serving(_settings(tmp_path, ["127.0.0.1"]), catalog) as (http, _):
        three_people = await _logins(http, ["198.51.100.1", "198.51.100.2", "198.51.100.3"])
        one_person = await _logins(http, ["198.51.100.9"] * 3)
    assert three_people == [401, 401, 401]
    assert one_person == [401, 401, 429]


async def test_an_untrusted_peer_cannot_spoof_its_address(catalog: Catalog, tmp_path: Path) -> None:
    async with serving(_settings(tmp_path, ["10.0.0.0/8"]), catalog) as (http, _):
        spoofed = await _logins(http, ["198.51.100.1", "198.51.100.2", "198.51.100.3"])
    assert spoofed == [401, 401, 429]  # all counted against the peer, 127.0.0.1
