"""Signed playback tokens: ``?token=…`` on every playlist and segment URL.

CDNs cache on the path and drop the query, so the origin verifies a token on every cache miss;
the check has to be small and cheap. A JWT is neither: a JSON header, JSON claims and an HS256
MAC make even a minimal token 160+ characters (repeated on every line of a media playlist), and
pyjwt spends ~30 µs decoding one. This format is a fixed binary layout under one HMAC-SHA256:
a typical token is ~90 characters and verifies in a few µs.

Wire format (four dot-separated ASCII fields, all URL-safe: no ``=`` padding, no ``+`` or ``/``)::

    v1.<kid>.<base64url(payload)>.<base64url(HMAC-SHA256(subkey, "v1.<kid>.<payload b64>"))>

    payload = expires   4 bytes, unsigned big-endian unix seconds (bounded by design: ≤ 2106)
              network   1 byte: 0 none | 4 IPv4 | 6 IPv6, then (if not 0) 1 byte prefix length
                        and the 4 or 16 network address bytes
              subject   the rest, UTF-8: ``video:<id>`` or ``path:<cleaned path>[/]``

The MAC covers the exact text before the last dot, version and kid included, so nothing is
parsed before it is authenticated and no canonical re-encoding is needed. It is checked with
``hmac.compare_digest``. ``subkey`` is derived from the configured key once, so a secret reused
for another purpose (access JWTs) cannot produce a valid playback MAC or the reverse. The
algorithm is fixed by the version field: there is no header to choose it (``alg: none`` cannot
exist). Expiry follows JWT ``exp`` semantics: the token is refused from that second on.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import ipaddress
import re
import time

import msgspec

from backends.errors import Forbidden, MediaNotFound
from backends.paths import clean
from conf import Settings

VERSION = "v1"
DEFAULT_TTL = 6 * 3600
MIN_KEY_BYTES = 32
MAX_TOKEN_CHARS = 512
MAX_EXPIRES = 0xFFFF_FFFF  # what the 4-byte field holds
VERIFIED_CACHE = 4096  # (token, subject, client) answers kept per signer

# Everything structural in one pass: exactly four fields, the version, URL-safe base64
# alphabets, a 32-byte MAC (43 chars unpadded). fullmatch: no trailing newline slips through.
_TOKEN = re.compile(r"v1\.([A-Za-z0-9_-]{1,32})\.([A-Za-z0-9_-]{8,})\.([A-Za-z0-9_-]{43})")
_KID = re.compile(r"[A-Za-z0-9_-]{1,32}")
_VIDEO_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SUBKEY_LABEL = b"clipsync playback token v1"

_INVALID = "invalid playback token"
_EXPIRED = "playback token expired"
_WRONG_SUBJECT = "playback token not valid for this video"
_WRONG_ADDRESS = "playback token not valid from this address"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class PlaybackClaims(msgspec.Struct, frozen=True, kw_only=True):
    subject: str
    expires: int
    network: str | None  # CIDR the token is bound to, e.g. "203.0.113.0/24"
    kid: str


def for_video(video_id: str) -> str:
    """The subject naming one catalog video. MediaNotFound for an id no catalog could hold."""
    if not _VIDEO_ID.fullmatch(video_id):
        raise MediaNotFound("no such video")
    return f"video:{video_id}"


@functools.lru_cache(maxsize=4096)  # asked on every request of a signed path-mode asset
def for_path(path: str) -> str:
    """The subject naming a path-mode asset, or with a trailing ``/`` a folder of them.

    The path goes through the same check as URL paths (MediaNotFound for ``..`` and friends).
    The library root itself is refused: a token for everything is a shared secret, not a grant.
    """
    cleaned = clean(path)
    if not cleaned:
        raise MediaNotFound("a playback token names a file or folder, not the library root")
    return f"path:{cleaned}/" if path.endswith("/") else f"path:{cleaned}"


def covers(granted: str, requested: str) -> bool:
    """Whether a token for ``granted`` may read ``requested``.

    Videos match exactly. Paths match on ``/`` boundaries: ``path:movies/b/`` (or
    ``path:movies/b``) covers ``path:movies/b`` and ``path:movies/b/x.mp4`` but not
    ``path:movies/bb/x.mp4``. A requested path must be canonical (what ``for_path`` returns),
    so ``movies/b/../secret`` cannot ride on a prefix.
    """
    if granted.startswith("video:"):
        return granted == requested
    if not granted.startswith("path:") or not requested.startswith("path:"):
        return False
    want = requested[5:]
    if not want or want != _canonical(want):
        return False
    prefix = granted[5:].rstrip("/")
    return bool(prefix) and (want == prefix or want.startswith(prefix + "/"))


def _canonical(path: str) -> str | None:
    try:
        return clean(path)
    except MediaNotFound:
        return None


def _check_subject(subject: str) -> None:
    """Only what for_video / for_path build may be signed: anything else could never match."""
    try:
        if subject.startswith("video:"):
            ok = for_video(subject[6:]) == subject
        else:
            ok = subject.startswith("path:") and for_path(subject[5:]) == subject
    except MediaNotFound:
        ok = False
    if not ok:
        raise ValueError(f"not a playback subject: {subject[:80]!r} (use for_video / for_path)")


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    # The alphabet was checked by _TOKEN; a length of 1 mod 4 is never valid base64.
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _normalize_network(cidr: str) -> Network:
    """A strict network; IPv4-mapped IPv6 ranges become the IPv4 range they map."""
    network = ipaddress.ip_network(cidr, strict=True)  # a bare IP is /32 or /128
    if isinstance(network, ipaddress.IPv6Network):
        mapped = network.network_address.ipv4_mapped
        if mapped is not None and network.prefixlen >= 96:
            return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


@functools.lru_cache(maxsize=1024)
def _wire_network(family: int, prefix: int, packed: bytes) -> tuple[Network, str] | None:
    """The network a token carries, and its text (the few distinct ones repeat across many
    requests, and building either costs more than the whole MAC check)."""
    try:
        network: Network
        if family == 4:
            network = ipaddress.IPv4Network((packed, prefix), strict=True)
        else:
            network = ipaddress.IPv6Network((packed, prefix), strict=True)
    except ValueError:
        return None
    return network, str(network)


@functools.lru_cache(maxsize=4096)
def _client(ip: str) -> Address | None:
    """The client address, IPv4-mapped IPv6 (``::ffff:a.b.c.d``, dual-stack sockets) as IPv4."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class PlaybackSigner:
    def __init__(self, keys: dict[str, bytes], current: str) -> None:
        if current not in keys:
            raise ValueError(f"no key for the current kid {current!r}")
        for kid, key in keys.items():
            if not _KID.fullmatch(kid):
                raise ValueError(f"kid {kid!r} must be 1-32 characters of [A-Za-z0-9_-]")
            if len(key) < MIN_KEY_BYTES:
                raise ValueError(f"playback key {kid!r} must be at least {MIN_KEY_BYTES} bytes")
        # Derived once: a per-purpose key, so verification costs a single HMAC. Each kid keeps
        # an HMAC already keyed; a MAC is a copy of it fed the text (see _mac).
        self._macs = {
            kid: hmac.new(hmac.digest(key, _SUBKEY_LABEL, hashlib.sha256), None, hashlib.sha256)
            for kid, key in keys.items()
        }
        self.current = current
        # A player sends one token with every segment request: the answer for a (token, subject,
        # client) is worked out once, the clock read every time. Only authentic tokens are kept
        # (lru_cache does not keep raised errors), so forged ones cannot crowd them out.
        self._authentic = functools.lru_cache(maxsize=VERIFIED_CACHE)(self._check)

    def sign(self, subject: str, expires: int, cidr: str | None = None) -> str:
        """A token granting ``subject`` until ``expires`` (unix seconds), optionally only to
        clients inside ``cidr`` (``203.0.113.0/24``, ``2001:db8::/48``; a bare IP is one host).
        ValueError for anything that could not be verified later."""
        _check_subject(subject)
        if isinstance(expires, bool) or not isinstance(expires, int):
            raise ValueError("expires must be an int of unix seconds")
        if not 0 < expires <= MAX_EXPIRES:
            raise ValueError(f"expires must be in 1..{MAX_EXPIRES}")
        if cidr is None:
            bound = b"\x00"
        else:
            network = _normalize_network(cidr)
            bound = bytes((network.version, network.prefixlen)) + network.network_address.packed
        payload = expires.to_bytes(4, "big") + bound + subject.encode("utf-8")
        signed = f"{VERSION}.{self.current}.{_b64encode(payload)}"
        token = f"{signed}.{_b64encode(_mac(self._macs[self.current], signed))}"
        if len(token) > MAX_TOKEN_CHARS:
            raise ValueError("subject too long for a playback token")
        return token

    def verify(
        self, token: str, subject: str, client_ip: str | None, now: float | None = None
    ) -> PlaybackClaims:
        """The claims of a token that grants ``subject`` to ``client_ip`` at ``now``; Forbidden
        with a short reason otherwise. Nothing in the token is read before its MAC checks out."""
        claims, problem = self._authentic(token, subject, client_ip)
        if (time.time() if now is None else now) >= claims.expires:
            raise Forbidden(_EXPIRED)
        if problem is not None:
            raise Forbidden(problem)
        return claims

    def _check(
        self, token: str, subject: str, client_ip: str | None
    ) -> tuple[PlaybackClaims, str | None]:
        """An authentic token's claims and what it does not grant (None: all is well); Forbidden
        for a token that is not ours. Everything but the clock: cached by ``_authentic``."""
        if len(token) > MAX_TOKEN_CHARS:
            raise Forbidden(_INVALID)
        match = _TOKEN.fullmatch(token)
        if match is None:
            raise Forbidden(_INVALID)
        kid, body, mac = match.groups()
        keyed = self._macs.get(kid)
        if keyed is None:
            raise Forbidden(_INVALID)
        expected = _b64encode(_mac(keyed, token[: match.start(3) - 1]))
        if not hmac.compare_digest(expected, mac):
            raise Forbidden(_INVALID)
        claims, network = _decode(body, kid)  # authentic from here: only our bugs can fail
        if not covers(claims.subject, subject):
            return claims, _WRONG_SUBJECT
        if network is not None:
            address = _client(client_ip) if client_ip else None
            # An IPv4 client is never "in" an IPv6 network and vice versa: False, not an error.
            if address is None or address not in network:
                return claims, _WRONG_ADDRESS
        return claims, None


def _mac(keyed: hmac.HMAC, text: str) -> bytes:
    # Not hmac.digest(): that one-shot call releases the GIL, and taking it back waits for
    # whichever thread took it meanwhile (granian's, under load), which cost a worker ~10x the
    # MAC itself. A copy of a keyed HMAC fed < 2 KB keeps the GIL, and skips the key setup.
    mac = keyed.copy()
    mac.update(text.encode("ascii"))
    return mac.digest()


def _decode(body: str, kid: str) -> tuple[PlaybackClaims, Network | None]:
    try:
        payload = _b64decode(body)
    except (binascii.Error, ValueError):
        raise Forbidden(_INVALID) from None
    if len(payload) < 6:
        raise Forbidden(_INVALID)
    expires = int.from_bytes(payload[:4], "big")
    family = payload[4]
    wire: tuple[Network, str] | None = None
    if family == 0:
        start = 5
    elif family in (4, 6):
        start = 6 + (4 if family == 4 else 16)
        wire = _wire_network(family, payload[5], payload[6:start])
        if wire is None or len(payload) <= start:
            raise Forbidden(_INVALID)
    else:
        raise Forbidden(_INVALID)
    try:
        subject = payload[start:].decode("utf-8")
    except UnicodeDecodeError:
        raise Forbidden(_INVALID) from None
    network, text = wire if wire is not None else (None, None)
    return PlaybackClaims(subject=subject, expires=expires, network=text, kid=kid), network


def from_settings(settings: Settings) -> PlaybackSigner | None:
    """The signer of playback URLs (``auth.playback_secret``, else ``auth.jwt_secret``); None
    when neither is set. ValueError for a key too short or a token requirement without a key."""
    auth = settings.auth
    key = auth.playback_secret or auth.jwt_secret
    if not key:
        if settings.vod.require_token:
            raise ValueError("vod.require_token needs auth.playback_secret or auth.jwt_secret")
        return None
    return PlaybackSigner({auth.jwt_kid: key.encode()}, auth.jwt_kid)
