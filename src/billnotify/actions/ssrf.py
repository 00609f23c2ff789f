"""The SSRF guard of webhook endpoints (SPEC §4: https only, public addresses only).

Two checks, both needed:

- :func:`check_url` before each request: the scheme is ``https`` and an IP-literal host
  is public (aiohttp connects to literals without asking any resolver);
- :class:`GuardedResolver`, the resolver of the endpoint's connector: every address a
  name resolves to must be public, or the connection is refused. The check happens on
  the very answer aiohttp connects to, so a name that resolves to a public address for
  a pre-check and to ``127.0.0.1`` a moment later (DNS rebinding) gains nothing.

``allow_private = true`` on an endpoint skips both (internal receivers, tests).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from billnotify.actions.base import UnsafeDestinationError

logger = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SIX_TO_FOUR = ipaddress.ip_network("2002::/16")


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    # IPv6 forms that carry an IPv4 address the packets may end up at
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    packed = address.packed
    if packed[:12] == bytes(12) and int(address) > 1:  # deprecated IPv4-compatible ::a.b.c.d
        return ipaddress.IPv4Address(packed[12:])
    return None


def is_public(address: IPAddress | str) -> bool:
    """Whether an address is globally routable: not private, loopback, link-local,
    multicast, reserved, unspecified, CGNAT (100.64/10), an IPv6 ULA, nor an IPv6 form
    of such an IPv4 address (mapped, NAT64, 6to4, Teredo)."""
    if isinstance(address, str):
        try:
            address = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return is_public(embedded)
    if (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or (isinstance(address, ipaddress.IPv4Address) and address in _CGNAT)
    ):
        return False
    return address.is_global


def check_url(url: str, *, allow_private: bool) -> None:
    """Refuse a URL that is not https or names a non-public IP address.

    Raises:
        UnsafeDestinationError: with a message saying why.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeDestinationError(f"not an http(s) URL: {url}")
    if allow_private:
        return
    if parts.scheme != "https":
        raise UnsafeDestinationError(
            f"refusing {parts.scheme}://{parts.hostname}: webhook URLs must be https "
            "(set allow_private = true for an internal receiver)"
        )
    try:
        literal = ipaddress.ip_address(parts.hostname.split("%", 1)[0])
    except ValueError:
        return  # a name: the resolver checks what it resolves to
    if not is_public(literal):
        raise UnsafeDestinationError(
            f"refusing {parts.hostname}: not a public address (set allow_private = true "
            "for an internal receiver)"
        )


class BlockedAddressError(OSError):
    """A name resolved to a non-public address (raised inside aiohttp's connector)."""

    def __init__(self, host: str, addresses: list[str]) -> None:
        self.host = host
        self.addresses = addresses
        super().__init__(
            f"refusing {host}: resolves to non-public address(es) {', '.join(addresses)} "
            "(set allow_private = true for an internal receiver)"
        )


class GuardedResolver(AbstractResolver):
    """A resolver that refuses names resolving to any non-public address.

    Args:
        inner: the resolver that does the lookup (aiohttp's default when None).
    """

    def __init__(self, inner: AbstractResolver | None = None) -> None:
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Resolve ``host`` and refuse the answer unless every address is public."""
        results = await self._inner.resolve(host, port, family)
        blocked = sorted({r["host"] for r in results if not is_public(r["host"])})
        if blocked:
            logger.warning("webhook host %s resolves to non-public %s", host, blocked)
            raise BlockedAddressError(host, blocked)
        return results

    async def close(self) -> None:
        """Close the inner resolver."""
        await self._inner.close()


def blocked_cause(exc: BaseException) -> BlockedAddressError | None:
    """The :class:`BlockedAddressError` behind an aiohttp connection error, if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, BlockedAddressError):
            return current
        seen.add(id(current))
        inner = getattr(current, "os_error", None)
        if isinstance(inner, BlockedAddressError):
            return inner
        current = current.__cause__ or current.__context__
    return None
