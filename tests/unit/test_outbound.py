"""The SSRF policy: which addresses are refused, and what `outboundAllowlist` lets through."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from regina.config import load_settings
from regina.errors import ConfigError
from regina.outbound import Allowlist, OutboundRefused, check_address, refusal_reason
from regina.outbound_http import checked_addresses


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("100.64.0.1", "CGNAT"),
        ("100.127.255.254", "CGNAT"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("255.255.255.255", "address"),
        ("240.0.0.1", "reserved"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fc00::1", "ULA"),
        ("fd12:3456::1", "ULA"),
        ("ff02::1", "multicast"),
        ("fec0::1", "site-local"),
        ("::ffff:127.0.0.1", "IPv4-mapped form of 127.0.0.1 (a loopback"),
        ("::ffff:10.0.0.1", "IPv4-mapped form of 10.0.0.1 (a private"),
        ("::ffff:169.254.169.254", "link-local"),
        ("2002:7f00:1::", "6to4 form of 127.0.0.1"),
        ("64:ff9b::a9fe:a9fe", "NAT64 form of 169.254.169.254"),
    ],
)
def test_non_public_addresses_are_refused_with_their_kind(address: str, kind: str) -> None:
    reason = refusal_reason(ipaddress.ip_address(address))
    assert reason is not None and kind in reason


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "100.63.255.255", "100.128.0.1", "2606:4700::1111", "::ffff:8.8.8.8"]
)
def test_public_addresses_pass(address: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) is None


def test_allowlist_by_ip_cidr_and_host_name() -> None:
    allow = Allowlist.parse(["127.0.0.1", "10.0.0.0/8", "MCP.internal.", "[::1]"])
    check_address("127.0.0.1", ipaddress.ip_address("127.0.0.1"), allow)
    check_address("10.9.8.7", ipaddress.ip_address("10.9.8.7"), allow)
    check_address("::1", ipaddress.ip_address("::1"), allow)
    # A listed host name may resolve to anything.
    check_address("mcp.internal", ipaddress.ip_address("192.168.0.5"), allow)
    with pytest.raises(OutboundRefused, match=r"127\.0\.0\.2 is a loopback address"):
        check_address("127.0.0.2", ipaddress.ip_address("127.0.0.2"), allow)
    with pytest.raises(OutboundRefused, match=r"other\.internal resolves to 192\.168\.0\.5, a private address"):
        check_address("other.internal", ipaddress.ip_address("192.168.0.5"), allow)


def test_a_name_resolving_to_loopback_is_refused_unless_allowed() -> None:
    with pytest.raises(OutboundRefused, match="localhost resolves to"):
        asyncio.run(checked_addresses("localhost", 80, Allowlist()))
    assert asyncio.run(checked_addresses("localhost", 80, Allowlist.parse(["localhost"])))


def test_allowlist_config_accepts_lists_and_comma_strings_and_names_bad_entries() -> None:
    assert load_settings({"REGINA_OUTBOUND_ALLOWLIST": "127.0.0.1, 10.0.0.0/8"}).outbound_allowlist == [
        "127.0.0.1",
        "10.0.0.0/8",
    ]
    assert load_settings({"REGINA_OUTBOUND_ALLOWLIST": '["::1"]'}).outbound_allowlist == ["::1"]
    with pytest.raises(ConfigError, match="outboundAllowlist.*'10.0.0.0/33'"):
        load_settings({"REGINA_OUTBOUND_ALLOWLIST": "10.0.0.0/33"})
