"""Which destinations a webhook may reach: pure checks of URLs and IP addresses.

Shared by the config loader (a URL certain to be refused is a config error) and the
SSRF guard of :mod:`billnotify.actions.ssrf` (which refuses it again at send time, and
checks what names resolve to). No I/O here.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_PART = re.compile(r"(0x[0-9a-f]*|[0-9]+)", re.IGNORECASE)


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


def noncanonical_ipv4(host: str) -> str | None:
    """What a host written as a non-canonical IPv4 address means, or None.

    ``127.1``, ``2130706433``, ``0x7f.1`` and ``017700000001`` all mean ``127.0.0.1`` to
    ``inet_aton`` (and so to some resolvers), while URL parsers refuse them or take them
    for names; none is a valid host name, so each is refused rather than guessed at.

    Returns:
        The dotted-quad address it stands for (``"?"`` when out of range), or None
        when ``host`` is a canonical address or a name.
    """
    parts = host.split(".")
    if not 1 <= len(parts) <= 4 or not all(_IPV4_PART.fullmatch(p) for p in parts):
        return None
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        pass
    else:
        return None
    try:
        return socket.inet_ntoa(socket.inet_aton(host))
    except OSError:
        return "?"


def url_problem(url: str, *, allow_private: bool) -> str | None:
    """Why a webhook URL is certain to be refused, judged from the URL alone.

    Refused: a scheme other than http(s); a non-canonical IPv4 host (always); and,
    without ``allow_private``, plain ``http://`` or an IP-literal host that is not
    public. A host name passes here; what it resolves to is checked elsewhere.

    Returns:
        The reason (naming the host, never the whole URL), or None when it may be used.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:  # e.g. an unclosed "[" of an IPv6 host
        return "not an http:// or https:// URL with a host"
    if parts.scheme not in ("http", "https") or not host:
        return "not an http:// or https:// URL with a host"
    meant = noncanonical_ipv4(host)
    if meant is not None:
        return (
            f"refusing {host}: not a canonical IPv4 address (it means {meant}); "
            "write the address as four decimal numbers"
        )
    if allow_private:
        return None
    if parts.scheme != "https":
        return (
            f"refusing {parts.scheme}://{host}: webhook URLs must be https "
            "(set allow_private = true for an internal receiver)"
        )
    try:
        literal = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if not is_public(literal):
        return (
            f"refusing {host}: not a public address (set allow_private = true "
            "for an internal receiver)"
        )
    return None
