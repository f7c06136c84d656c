"""The direct route's HTTP: one streamed POST on a kept-alive connection, its response read by
httptools (the C HTTP parser uvicorn uses).

LiteLLM's module-level client is an `httpx.Client`; per model call its request building, auth,
redirect and cookie layers, httpcore's pool and event machinery, and the two writes it makes
(headers, then body) cost ≈ 0.37 ms of CPU more than the same call on `http.client`
(docs/benchmarks.md). `http.client` in turn validated and wrote every header per call, sent the
headers and the body in two writes (with TCP_NODELAY two segments, waking the model's server
twice), parsed the response's headers with the `email` package and walked its chunked decoding
in Python: ≈ 0.1 ms more per call. Here a request's line and headers are built once per endpoint
and header set (`_head`), each request leaves in one write, and httptools takes the status,
headers and chunk framing off the response as it arrives. A worker makes every model call of its
chats this way, so this module keeps a small pool of idle connections per (scheme, host, port)
in the process and reuses them. The check that an idle connection is still usable polls its
socket without yielding: under gevent a `select` yields to the hub, and the worker's consumer
loop then ran (re-sending its BRPOP) before the model request went out.

It serves a request only when nothing would make httpx's answer differ: no proxy from the
environment for the host, no HTTP/2, no client certificate, no forced IPv4, and a TLS setting
LiteLLM resolves to a context (or to no verification). `post_lines` returns None otherwise,
and for a redirect, and the caller goes through LiteLLM's client as before.
"""

from __future__ import annotations

import functools
import http.client
import os
import re
import select
import socket
import ssl
import urllib.request
from collections.abc import Generator
from typing import Any
from urllib.parse import urlsplit

import httptools
import httpx

from regina.config import environment
from regina.runtime.models.setup import get_litellm

try:  # the unpatched poll: a zero-timeout check that never yields to gevent's hub
    from gevent.monkey import get_original

    _poll: Any = get_original("select", "poll")
except ImportError:  # pragma: no cover - gevent is a dependency; plain select without it
    _poll = select.poll

__all__ = ["post_lines", "Lines"]

_Key = tuple[str, str, int]
#: Idle keep-alive connections per (scheme, host, port); a connection is in here or in use.
_idle: dict[_Key, list[_Connection]] = {}
#: Whether this module may serve a (scheme, host, port): decided once, on its first request.
_served: dict[_Key, bool] = {}
_MAX_IDLE = 16
_ERROR_BODY_LIMIT = 65536
_READ_SIZE = 65536


def _forget_all() -> None:  # a forked child must not share its parent's sockets
    _idle.clear()


os.register_at_fork(after_in_child=_forget_all)


def _may_serve(key: _Key) -> bool:
    scheme, host, _port = key
    if scheme not in ("http", "https"):
        return False
    from litellm.llms.custom_httpx.http_handler import http2_enabled

    litellm = get_litellm()
    if http2_enabled() or litellm.force_ipv4 or getattr(litellm, "sync_transport", None) is not None:
        return False
    if environment().get("SSL_CERTIFICATE", litellm.ssl_certificate):
        return False
    proxies = urllib.request.getproxies_environment()
    if (proxies.get(scheme) or proxies.get("all")) and not urllib.request.proxy_bypass(host):
        return False
    return scheme == "http" or _tls_context() is not None


def _tls_context() -> ssl.SSLContext | None:
    """The context LiteLLM's client verifies with (SSL_VERIFY, SSL_CERT_FILE, certifi)."""
    from litellm.llms.custom_httpx.http_handler import get_ssl_configuration

    conf = get_ssl_configuration(None)
    if isinstance(conf, ssl.SSLContext):
        return conf
    if conf is False:
        return ssl._create_unverified_context()  # noqa: S323 - the user turned verification off
    return None


class _Connection:
    """One kept-alive HTTP/1.1 connection to a model's server: its socket."""

    __slots__ = ("sock",)

    def __init__(self, key: _Key, timeout: float | None) -> None:
        scheme, host, port = key
        sock = socket.create_connection((host, port), timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if scheme == "https":
            context = _tls_context()
            assert context is not None  # _may_serve serves https only with one
            sock = context.wrap_socket(sock, server_hostname=host)
        self.sock: Any = sock

    def close(self) -> None:
        self.sock.close()


def _readable_now(sock: socket.socket) -> bool:
    poller = _poll()
    poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(0))


def _checkout(key: _Key, timeout: float | None) -> _Connection | None:
    """An idle connection to reuse (its timeout set), or None."""
    idle = _idle.get(key)
    while idle:
        conn = idle.pop()
        # An idle kept-alive socket is readable only when the server closed it (or broke the
        # protocol): drop it instead of writing a request into it.
        if not _readable_now(conn.sock):
            conn.sock.settimeout(timeout)
            return conn
        conn.close()
    return None


def _checkin(key: _Key, conn: _Connection) -> None:
    idle = _idle.setdefault(key, [])
    if len(idle) < _MAX_IDLE:
        idle.append(conn)
    else:
        conn.close()


@functools.lru_cache(maxsize=64)
def _head(key: _Key, path: str, headers: tuple[tuple[str, str], ...]) -> bytes:
    """A POST's request line and headers up to the value of its Content-Length: Host and
    `Accept-Encoding: identity` as `http.client` sent them, the caller's headers, then
    Content-Length; built once per endpoint and header set."""
    scheme, host, port = key
    address = f"[{host}]" if ":" in host else host  # IPv6 (urlsplit drops the brackets)
    authority = address if port == (443 if scheme == "https" else 80) else f"{address}:{port}"
    lines = [f"POST {path} HTTP/1.1", f"Host: {authority}", "Accept-Encoding: identity"]
    for name, value in headers:
        if not _TOKEN.fullmatch(name) or _BAD_VALUE.search(value):  # no header injection
            raise ValueError(f"invalid HTTP header {name!r}")
        lines.append(f"{name}: {value}")
    # Content-Length last: the caller's headers never carry one (LiteLLM's do not).
    return ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_BAD_VALUE = re.compile(r"[\r\n\x00]")


class _Exchange:
    """httptools' callbacks for one response: its headers, the body as it arrives, its end."""

    __slots__ = ("headers", "headers_done", "status", "body", "complete", "keep_alive", "parser")

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.status = 0
        self.body: list[bytes] = []
        self.complete = False
        self.keep_alive = False
        #: The parser feeding this exchange, until the exchange ends (`done`).
        self.parser: Any = httptools.HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.headers_done = True
        self.status = int(self.parser.get_status_code())

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True
        # Asked now: once this callback returns, the parser is reset for a next message.
        self.keep_alive = bool(self.parser.should_keep_alive())

    def feed(self, sock: Any) -> bool:
        """Read what arrived into the parser; False when the server closed the connection."""
        data = sock.recv(_READ_SIZE)
        if not data:
            return False
        self.parser.feed_data(data)
        return True

    def done(self) -> None:
        self.parser = None  # the parser holds this exchange: no cycle left behind

    def framed(self) -> bool:
        """Whether the body's end is in the message (a length or chunks), not the close."""
        return any(name.lower() in (b"content-length", b"transfer-encoding") for name, _ in self.headers)


class Lines:
    """The response's lines as text (no line ends), like `httpx.Response.iter_lines()`; the
    connection goes back to the pool when the body was read to its end, else it is closed."""

    def __init__(self, key: _Key, conn: _Connection, exchange: _Exchange) -> None:
        self._key, self._exchange = key, exchange
        self._conn: _Connection | None = conn
        self._it = self._lines(conn.sock)

    def __iter__(self) -> Generator[str, None, None]:
        return self._it

    def __next__(self) -> str:
        return next(self._it)

    def _lines(self, sock: Any) -> Generator[str, None, None]:
        # What each read brings (httptools has taken the chunk framing off), split here.
        exchange = self._exchange
        rest = b""
        while True:
            if exchange.body:
                data = b"".join(exchange.body)
                exchange.body.clear()
                *lines, rest = (rest + data).split(b"\n") if rest else data.split(b"\n")
                for raw in lines:
                    yield raw.rstrip(b"\r").decode("utf-8", "replace")
            if exchange.complete:
                break
            if not exchange.feed(sock):
                if exchange.framed():
                    raise http.client.IncompleteRead(rest)
                exchange.complete = True  # a body that ends with the connection (not kept)
        if rest:
            yield rest.rstrip(b"\r").decode("utf-8", "replace")

    def close(self) -> None:
        self._it.close()
        conn, self._conn = self._conn, None
        if conn is None:
            return
        exchange = self._exchange
        exchange.done()
        if exchange.complete and exchange.keep_alive:
            _checkin(self._key, conn)
        else:
            conn.close()


def post_lines(url: str, body: bytes, headers: dict[str, str], timeout: float | None, config: Any) -> Lines | None:
    """POST `body` and return the response's lines, or None when LiteLLM's client must make
    this request (see the module docstring).

    Raises the provider's exception from `config.get_error_class` for an HTTP error status
    (with the error body, as LiteLLM's client reports it), `litellm.Timeout` when connecting or
    waiting for the status line timed out, and the socket's error otherwise.
    """
    parts = urlsplit(url)
    scheme = parts.scheme
    key = (scheme, parts.hostname or "", parts.port or (443 if scheme == "https" else 80))
    served = _served.get(key)
    if served is None:
        served = _served[key] = _may_serve(key)
    if not served:
        return None
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    send = headers if any(k.lower() == "user-agent" for k in headers) else {"User-Agent": _user_agent(), **headers}
    request = b"%s%d\r\n\r\n%s" % (_head(key, path, tuple(send.items())), len(body), body)
    conn, exchange = _exchange(key, request, timeout)
    if exchange.status < 300:
        return Lines(key, conn, exchange)
    try:
        if exchange.status >= 400:
            _raise_error(conn, exchange, config)
        return None  # a redirect: LiteLLM's client follows it
    finally:
        exchange.done()
        conn.close()


def _exchange(key: _Key, request: bytes, timeout: float | None) -> tuple[_Connection, _Exchange]:
    """Send `request` in one write on a kept-alive (or new) connection and read up to the end
    of the response's headers."""
    exchange = _Exchange()
    conn = _checkout(key, timeout)
    try:
        if conn is None:
            conn = _Connection(key, timeout)
        conn.sock.sendall(request)
        while not exchange.headers_done:
            if not exchange.feed(conn.sock):
                raise http.client.RemoteDisconnected("Remote end closed connection without response")
    except BaseException as exc:
        exchange.done()
        if conn is not None:
            conn.close()
        if isinstance(exc, TimeoutError):
            raise get_litellm().Timeout(
                message=f"Connection timed out after {timeout} seconds.",
                model="default-model-name",
                llm_provider="litellm-httpx-handler",
            ) from exc
        if isinstance(exc, httptools.HttpParserError):
            raise http.client.BadStatusLine(str(exc)) from exc
        raise
    return conn, exchange


def _raise_error(conn: _Connection, exchange: _Exchange, config: Any) -> None:
    """The provider's exception for an error status, with (the start of) the error body."""
    from litellm.llms.custom_httpx.http_handler import mask_sensitive_info

    while not exchange.complete and sum(map(len, exchange.body)) < _ERROR_BODY_LIMIT:
        if not exchange.feed(conn.sock):
            break
    text = mask_sensitive_info(  # type: ignore[no-untyped-call]
        b"".join(exchange.body)[:_ERROR_BODY_LIMIT].decode("utf-8", "replace")
    )
    raise config.get_error_class(
        error_message=text,
        status_code=exchange.status,
        headers=httpx.Headers([(k.decode("latin-1"), v.decode("latin-1")) for k, v in exchange.headers]),
    )


def _user_agent() -> str:
    from litellm.llms.custom_httpx.http_handler import get_default_headers

    return str(get_default_headers()["User-Agent"])  # litellm/<version> or LITELLM_USER_AGENT
