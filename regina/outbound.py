"""SSRF guard for the URLs Regina opens on a definition's behalf (SPEC §5: MCP servers).

A definition's author chooses those URLs, so an agent must not become a way into the worker's
own network: a host that is, or resolves to, a loopback, private, link-local, CGNAT, multicast,
unspecified or otherwise non-public address (IPv6 loopback/ULA/link-local, and IPv4 addresses
hidden in IPv4-mapped, 6to4 or NAT64 forms) is refused unless `outboundAllowlist` names it.

This module is the policy (stdlib only, so settings can validate `outboundAllowlist` cheaply);
`regina.outbound_http` applies it to the addresses actually connected to.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from regina.errors import ReginaError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_ULA = ipaddress.ip_network("fc00::/7")


class OutboundRefused(ReginaError):
    """A URL's host is (or resolves to) an address outbound connections may not reach."""


def refusal_reason(ip: IPAddress) -> str | None:
    """What kind of non-public address `ip` is ("a loopback address", …), or None if public."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded, form = ip.ipv4_mapped, "IPv4-mapped"
        if embedded is None and ip.sixtofour is not None:
            embedded, form = ip.sixtofour, "6to4"
        if embedded is None and ip in _NAT64:
            embedded, form = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), "NAT64"
        if embedded is not None:
            inner = refusal_reason(embedded)
            return f"the {form} form of {embedded} ({inner})" if inner else None
    kinds = [
        (ip.is_unspecified, "an unspecified address"),
        (ip.is_loopback, "a loopback address"),
        (ip.is_link_local, "a link-local address"),
        (isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT, "a CGNAT (shared) address"),
        (ip.is_multicast, "a multicast address"),
        (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local, "a site-local address"),
        (isinstance(ip, ipaddress.IPv6Address) and ip in _ULA, "a unique local (ULA) address"),
        (ip.is_reserved, "a reserved address"),
        (ip.is_private, "a private address"),
        (not ip.is_global, "not a public address"),
    ]
    for hit, kind in kinds:
        if hit:
            return kind
    return None


@dataclass(frozen=True)
class Allowlist:
    """`outboundAllowlist`: host names (exact, case-insensitive), IP addresses and CIDRs."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> Allowlist:
        """Read config entries; ValueError naming an entry that is neither a host, IP nor CIDR."""
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for raw in entries:
            entry = raw.strip().lower().strip("[]")
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            if "/" in entry or not all(part and len(part) <= 63 for part in entry.rstrip(".").split(".")):
                raise ValueError(f"outboundAllowlist entry {raw!r} is not a host name, IP address or CIDR")
            hosts.add(entry.rstrip("."))
        return cls(frozenset(hosts), tuple(networks))

    def allows_host(self, host: str) -> bool:
        """True when the host name itself is listed (then any address it resolves to is allowed)."""
        return host.lower().rstrip(".").strip("[]") in self.hosts

    def allows_ip(self, ip: IPAddress) -> bool:
        """True when a listed IP or CIDR contains `ip`."""
        return any(ip.version == net.version and ip in net for net in self.networks)


def check_address(host: str, ip: IPAddress, allow: Allowlist) -> None:
    """Raise OutboundRefused unless connecting to `ip` (resolved from `host`) is allowed."""
    if allow.allows_host(host) or allow.allows_ip(ip):
        return
    reason = refusal_reason(ip)
    if reason is not None:
        shown = f"{host.strip('[]')} is {reason}" if _is_literal(host, ip) else f"{host} resolves to {ip}, {reason}"
        raise OutboundRefused(f"refused: {shown} (add it to outboundAllowlist to allow it)")


def _is_literal(host: str, ip: IPAddress) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")) == ip
    except ValueError:
        return False


def parse_allowlist(entries: Sequence[str]) -> Allowlist:
    """`Allowlist.parse`, for callers that hold the config list."""
    return Allowlist.parse(entries)
