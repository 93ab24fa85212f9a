"""The client's own address behind proxies we trust (an Ingress, a load balancer, a CDN).

Only a peer inside ``server.trusted_proxies`` may say who the client is, through
``X-Forwarded-For``. The list is read from the right: each trusted proxy appended the address it
got the request from, so the first address from the right that is not a trusted proxy is the
client; anything to its left was written by the client and proves nothing. A malformed entry
ends the walk at the last address we could check. Playback tokens bound to an address range, the
per-address sign-in limits and the access log all see the result.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_HOPS = 32  # a longer X-Forwarded-For is cut: no one needs more, and it bounds the work


def parse_trusted(items: Iterable[str]) -> tuple[Network, ...]:
    """Networks from "10.0.0.0/8", "192.0.2.7", "2001:db8::/32"; ValueError names a bad one."""
    networks = []
    for item in items:
        try:
            networks.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or network") from None
    return tuple(networks)


def _trusted(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def real_client(peer: str, forwarded_for: str | None, trusted: tuple[Network, ...]) -> str:
    """Who sent the request: ``peer`` itself unless it is a trusted proxy that forwarded it."""
    if not forwarded_for or not _trusted(peer, trusted):
        return peer
    client = peer
    for hop in reversed(forwarded_for.split(",")[-MAX_HOPS:]):
        address = hop.strip()
        try:
            ipaddress.ip_address(address)
        except ValueError:
            return client  # garbage: the last address we could check
        client = address
        if not _trusted(address, trusted):
            return address
    return client  # every hop a trusted proxy: the left-most one


class TrustedProxies:
    """Puts the real client into the ASGI scope, so every reader of ``client`` gets it."""

    def __init__(self, app: ASGIApp, trusted: tuple[Network, ...]) -> None:
        self.app = app
        self.trusted = trusted

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("client"):
            forwarded = [v for k, v in scope["headers"] if k == b"x-forwarded-for"]
            if forwarded:
                joined = ",".join(v.decode("latin-1") for v in forwarded)
                host = scope["client"][0]
                real = real_client(host, joined, self.trusted)
                if real != host:
                    scope["client"] = (real, 0)
        await self.app(scope, receive, send)
