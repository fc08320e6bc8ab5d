"""Which hosts a tool may reach: the SSRF policy, applied to the addresses a host resolves to.

A host is refused when any address it resolves to is loopback, private, link-local, multicast,
reserved, unspecified, not globally routable or a cloud metadata endpoint, including IPv4 hidden
inside IPv6 (mapped, 6to4, Teredo, NAT64) and odd IPv4 spellings (2130706433, 0x7f.1, 0177.0.0.1).
Only the exact hosts of `allowed_hosts` skip the check (for tests and intranets).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from .errors import ToolError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_METADATA_NETWORKS = [
    ipaddress.ip_network(net)
    for net in (
        "169.254.0.0/16",  # AWS, GCP, Azure IMDS and link-local in general
        "100.100.100.200/32",  # Alibaba Cloud
        "192.0.0.0/24",  # IETF protocol assignments, Oracle Cloud's 192.0.0.192
        "168.63.129.16/32",  # Azure wire server: a public address that only the platform answers
        "fd00:ec2::/32",  # AWS IMDS over IPv6
    )
]
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_ODD_IPV4_CHARS = set("0123456789abcdefx.")


def blocked_reason(address: IPAddress) -> str | None:
    """Why connecting to `address` is refused, or None when it is a public unicast address."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None and (reason := blocked_reason(embedded)):
            return f"{reason} (embedded in {address})"
    if any(address in net for net in _METADATA_NETWORKS if net.version == address.version):
        return "a link-local or cloud metadata address"
    checks = (
        (address.is_loopback, "a loopback address"),
        (address.is_unspecified, "an unspecified address"),
        (address.is_link_local, "a link-local address"),
        (address.is_multicast, "a multicast address"),
        (address.is_private, "a private address"),
        (address.is_reserved, "a reserved address"),
        (not address.is_global, "not a globally routable address"),
    )
    return next((reason for hit, reason in checks if hit), None)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def literal_address(host: str) -> IPAddress | None:
    """The address a host names literally, including the shorthand IPv4 forms `inet_aton` accepts."""
    bare = host.strip("[]")
    try:
        return ipaddress.ip_address(bare.split("%", 1)[0])
    except ValueError:
        pass
    if bare and set(bare.lower()) <= _ODD_IPV4_CHARS and bare[0].isdigit():
        try:
            return ipaddress.IPv4Address(socket.inet_aton(bare))
        except OSError:
            return None
    return None


def _bracketed(host: str) -> str:
    """host lower-cased, an IPv6 literal in brackets: how allowed_hosts spells it before a port."""
    host = host.lower().strip("[]")
    return f"[{host}]" if ":" in host else host


class HostPolicy:
    """Resolves a host once, checks every address, and returns the one address to connect to."""

    def __init__(self, allowed_hosts: list[str]) -> None:
        self._allowed = {host.lower() for host in allowed_hosts}

    def is_allowed_host(self, host: str, port: int) -> bool:
        bracketed = _bracketed(host)
        return (bracketed.strip("[]") in self._allowed or bracketed in self._allowed
                or f"{bracketed}:{port}" in self._allowed)

    def check_url(self, url: str) -> None:
        """Refuses non-http(s) URLs and literal addresses before any network work is done."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ToolError(f"Refused {url!r}: only http:// and https:// URLs can be fetched.")
        if not parts.hostname:
            raise ToolError(f"Refused {url!r}: the URL has no host.")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise ToolError(f"Refused {url!r}: {exc}.") from None
        address = literal_address(parts.hostname)
        if address is not None and not self.is_allowed_host(parts.hostname, port):
            self._refuse_if_blocked(parts.hostname, port, address)

    async def resolve(self, host: str, port: int) -> list[str]:
        """The checked addresses to connect to, in resolver order; raises ToolError when the host may not
        be reached (one blocked address refuses the host: a resolver must not be able to mix them)."""
        address = literal_address(host)
        addresses = [address] if address is not None else await self._lookup(host, port)
        if not self.is_allowed_host(host, port):
            for address in addresses:
                self._refuse_if_blocked(host, port, address)
        return [str(address) for address in addresses]

    def _refuse_if_blocked(self, host: str, port: int, address: IPAddress) -> None:
        reason = blocked_reason(address)
        if reason:
            self._refuse_other_port(host, port)
            spelled = "" if host.strip("[]") == str(address) else f" (resolves to {address})"
            raise ToolError(
                f"Refused to connect to {host}{spelled}: it is {reason}. Only public internet hosts can be "
                "reached; ask the user to add the host to allowed_hosts if it is meant to be reachable."
            )

    def _refuse_other_port(self, host: str, port: int) -> None:
        """A blocked host that is allowed on other ports is refused by naming them: a model that mistyped the
        port of a URL it was given can correct it (they are ports the user allowed, nothing new)."""
        bracketed = _bracketed(host)
        others = sorted(allowed for allowed in self._allowed if allowed.rpartition(":")[0] == bracketed)
        if others:
            raise ToolError(f"Refused {bracketed}:{port}: on this host only {', '.join(others)} may be reached.")

    @staticmethod
    async def _lookup(host: str, port: int) -> list[IPAddress]:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise ToolError(f"Could not resolve host {host!r}: {exc}. Check the spelling of the URL.") from None
        addresses = list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos))
        if not addresses:
            raise ToolError(f"Host {host!r} has no address.")
        return addresses
