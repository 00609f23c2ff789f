"""The SSRF guard of webhook endpoints (SPEC §4: https only, public addresses only).

Two checks, both needed:

- :func:`check_url` before each request: the scheme is ``https`` and an IP-literal host
  is public (aiohttp connects to literals without asking any resolver); the same check
  (:func:`billnotify.addresses.url_problem`) makes such a URL a config error;
- :class:`GuardedResolver`, the resolver of the endpoint's connector: every address a
  name resolves to must be public, or the connection is refused. The check happens on
  the very answer aiohttp connects to, so a name that resolves to a public address for
  a pre-check and to ``127.0.0.1`` a moment later (DNS rebinding) gains nothing.

``allow_private = true`` on an endpoint skips both (internal receivers, tests); a host
written as a non-canonical IPv4 address (``127.1``, ``2130706433``) is refused always.
"""

from __future__ import annotations

import logging
import socket

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from billnotify.actions.base import UnsafeDestinationError
from billnotify.addresses import is_public, url_problem

logger = logging.getLogger(__name__)


def check_url(url: str, *, allow_private: bool) -> None:
    """Refuse a URL that is not https, names a non-public IP address, or writes an
    IPv4 address in a non-canonical form (``127.1``; refused even with
    ``allow_private``).

    Raises:
        UnsafeDestinationError: with a message saying why (permanent: never retried).
    """
    problem = url_problem(url, allow_private=allow_private)
    if problem is not None:
        raise UnsafeDestinationError(problem)


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


__all__ = [
    "BlockedAddressError",
    "GuardedResolver",
    "blocked_cause",
    "check_url",
    "is_public",
]
