"""The direct route's HTTP: one streamed POST on a kept-alive `http.client` connection.

LiteLLM's module-level client is an `httpx.Client`; per model call its request building, auth,
redirect and cookie layers, httpcore's pool and event machinery, and the two writes it makes
(headers, then body) cost ≈ 0.37 ms of CPU more than the same call on `http.client` (one write,
a line reader in C; `benchmarks`' profile of a chat, docs/benchmarks.md). A worker makes every
model call of its chats this way, so this module keeps a small pool of idle connections per
(scheme, host, port) in the process and reuses them.

http.client writes a request's headers and its body in two sends; with TCP_NODELAY (which it
sets) they leave as two segments and wake the model's server twice. The connections here hold
the request's writes and send them as one. The check that an idle connection is still usable
polls its socket without yielding: under gevent a `select` yields to the hub, and the worker's
consumer loop then ran (re-sending its BRPOP) before the model request went out.

It serves a request only when nothing would make httpx's answer differ: no proxy from the
environment for the host, no HTTP/2, no client certificate, no forced IPv4, and a TLS setting
LiteLLM resolves to a context (or to no verification). `post_lines` returns None otherwise,
and for a redirect, and the caller goes through LiteLLM's client as before.
"""

from __future__ import annotations

import http.client
import os
import select
import socket
import ssl
import urllib.request
from collections.abc import Generator
from typing import Any
from urllib.parse import urlsplit

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
_idle: dict[_Key, list[_Conn]] = {}
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


class _OneWrite:
    """Holds what `http.client` sends while a request is written, for `request_in_one_write`."""

    _held: list[bytes] | None = None

    def send(self, data: Any) -> None:
        if self._held is not None:
            self._held.append(bytes(data))
        else:
            super().send(data)  # type: ignore[misc]

    def request_in_one_write(self, path: str, body: bytes, headers: dict[str, str]) -> None:
        """POST `body`: the request line, headers and body in one send (one TCP segment when
        it fits)."""
        self._held = []
        try:
            self.request("POST", path, body=body, headers=headers)  # type: ignore[attr-defined]
        finally:
            held, self._held = self._held, None
        super().send(b"".join(held))  # type: ignore[misc]


class _Connection(_OneWrite, http.client.HTTPConnection):
    pass


class _TLSConnection(_OneWrite, http.client.HTTPSConnection):
    pass


_Conn = _Connection | _TLSConnection


def _connect(key: _Key, timeout: float | None) -> _Conn:
    scheme, host, port = key
    if scheme == "https":
        return _TLSConnection(host, port, timeout=timeout, context=_tls_context())
    return _Connection(host, port, timeout=timeout)


def _readable_now(sock: socket.socket) -> bool:
    poller = _poll()
    poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(0))


def _checkout(key: _Key, timeout: float | None) -> _Conn:
    idle = _idle.get(key)
    while idle:
        conn = idle.pop()
        sock = conn.sock
        # An idle kept-alive socket is readable only when the server closed it (or broke the
        # protocol): drop it instead of writing a request into it.
        if sock is not None and not _readable_now(sock):
            sock.settimeout(timeout)
            return conn
        conn.close()
    return _connect(key, timeout)


def _checkin(key: _Key, conn: _Conn) -> None:
    idle = _idle.setdefault(key, [])
    if len(idle) < _MAX_IDLE:
        idle.append(conn)
    else:
        conn.close()


class Lines:
    """The response's lines as text (no line ends), like `httpx.Response.iter_lines()`; the
    connection goes back to the pool when the body was read to its end, else it is closed."""

    def __init__(self, key: _Key, conn: _Conn, response: http.client.HTTPResponse) -> None:
        self._key, self._response = key, response
        self._conn: _Conn | None = conn
        self._it = self._lines()

    def __iter__(self) -> Generator[str, None, None]:
        return self._it

    def __next__(self) -> str:
        return next(self._it)

    def _lines(self) -> Generator[str, None, None]:
        # What has arrived, a chunk at a time (`read1` returns as soon as bytes are there), split
        # here: `http.client`'s readline walks its chunked decoding once per line, which cost
        # about as much as parsing the line's event.
        read1 = self._response.read1
        rest = b""
        while data := read1(_READ_SIZE):
            *lines, rest = (rest + data).split(b"\n") if rest else data.split(b"\n")
            for raw in lines:
                yield raw.rstrip(b"\r").decode("utf-8", "replace")
        if rest:
            yield rest.rstrip(b"\r").decode("utf-8", "replace")

    def close(self) -> None:
        self._it.close()
        conn, self._conn = self._conn, None
        if conn is None:
            return
        response = self._response
        # Read to its end: a chunked body closes itself at its last chunk, a sized one is done
        # when nothing is left of its length.
        if (response.isclosed() or response.length == 0) and not response.will_close:
            response.close()
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
    litellm = get_litellm()
    send = headers if any(k.lower() == "user-agent" for k in headers) else {"User-Agent": _user_agent(), **headers}
    conn = _checkout(key, timeout)
    try:
        conn.request_in_one_write(path, body, send)
        response = conn.getresponse()
    except TimeoutError as exc:
        conn.close()
        raise litellm.Timeout(
            message=f"Connection timed out after {timeout} seconds.",
            model="default-model-name",
            llm_provider="litellm-httpx-handler",
        ) from exc
    except BaseException:
        conn.close()
        raise
    status = response.status
    if status < 300:
        return Lines(key, conn, response)
    try:
        if status < 400:
            return None  # a redirect: LiteLLM's client follows it
        from litellm.llms.custom_httpx.http_handler import mask_sensitive_info

        text = mask_sensitive_info(  # type: ignore[no-untyped-call]
            response.read(_ERROR_BODY_LIMIT).decode("utf-8", "replace")
        )
        raise config.get_error_class(
            error_message=text, status_code=status, headers=httpx.Headers(response.getheaders())
        )
    finally:
        conn.close()


def _user_agent() -> str:
    from litellm.llms.custom_httpx.http_handler import get_default_headers

    return str(get_default_headers()["User-Agent"])  # litellm/<version> or LITELLM_USER_AGENT
