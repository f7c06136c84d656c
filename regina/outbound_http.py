"""Outbound HTTP that honours the SSRF policy of `regina.outbound` on every connection.

`GuardedBackend` resolves a host once, checks every address, and connects to a checked address
itself: there is no window in which a second DNS answer (rebinding) could send the connection
elsewhere. TLS still verifies and sends SNI for the URL's host name, which httpcore takes from
the URL, not from the socket. Environment proxies are ignored (a proxy would hide the target).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpcore2
import httpx2

from regina.outbound import Allowlist, IPAddress, OutboundRefused, check_address


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to (an IP literal resolves to itself)."""
    bare = host.strip("[]")
    try:
        return [ipaddress.ip_address(bare)]
    except ValueError:
        pass
    try:
        infos = await anyio.getaddrinfo(bare, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise OutboundRefused(f"cannot resolve {host}: {exc}") from exc
    seen: dict[str, IPAddress] = {}
    for *_, sockaddr in infos:
        address = str(sockaddr[0]).split("%", 1)[0]
        seen.setdefault(address, ipaddress.ip_address(address))
    return list(seen.values())


async def checked_addresses(host: str, port: int, allow: Allowlist) -> list[IPAddress]:
    """Resolve `host` and check every address; refused when any of them is refused."""
    addresses = await resolve(host, port)
    if not addresses:
        raise OutboundRefused(f"cannot resolve {host}: no addresses")
    for ip in addresses:
        check_address(host, ip, allow)
    return addresses


@dataclass
class GuardedBackend(httpcore2.AsyncNetworkBackend):
    """httpcore network backend that connects only to addresses it resolved and checked itself."""

    allow: Allowlist
    inner: httpcore2.AsyncNetworkBackend = field(default_factory=httpcore2.AnyIOBackend)

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        addresses = await checked_addresses(host, port, self.allow)
        last: Exception | None = None
        for ip in addresses:
            try:
                return await self.inner.connect_tcp(
                    str(ip), port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except httpcore2.ConnectError as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore2.AsyncNetworkStream:
        raise OutboundRefused("unix sockets are not allowed for outbound connections")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class GuardedTransport(httpx2.AsyncHTTPTransport):
    """httpx2 transport whose connections go through `GuardedBackend` (and no proxy)."""

    def __init__(self, allow: Allowlist) -> None:
        super().__init__(trust_env=False)
        ssl_context = self._pool._ssl_context  # the context httpx2 built (verification on)
        self._pool = httpcore2.AsyncConnectionPool(ssl_context=ssl_context, network_backend=GuardedBackend(allow))


def guarded_client(
    allow: Allowlist,
    headers: dict[str, str] | None = None,
    timeout: httpx2.Timeout | None = None,
    auth: httpx2.Auth | None = None,
    wrap: Callable[[httpx2.AsyncBaseTransport], httpx2.AsyncBaseTransport] | None = None,
) -> httpx2.AsyncClient:
    """An httpx2 client that reaches only allowed addresses (shaped like the MCP SDK's factory).

    `wrap` puts an observer around the guarded transport (the guard stays underneath).
    """
    transport: httpx2.AsyncBaseTransport = GuardedTransport(allow)
    return httpx2.AsyncClient(
        transport=wrap(transport) if wrap is not None else transport,
        headers=headers,
        timeout=timeout if timeout is not None else httpx2.Timeout(30.0, read=300.0),
        auth=auth,
        trust_env=False,
    )


def host_of(url: str) -> tuple[str, int]:
    """(host, port) of an http(s) URL."""
    parsed = httpx2.URL(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return parsed.host, port


async def check_url(url: str, allow: Allowlist) -> None:
    """Refuse a URL up front with a clear reason (the backend checks again on every connect)."""
    host, port = host_of(url)
    await checked_addresses(host, port, allow)
