"""Redis clients made one way everywhere: decoded strings, health checks, sane timeouts.

redis-py's pool refuses a 101st connection (`MaxConnectionsError`) by default. Every waiting
chat holds one connection in a web process (its XREAD) and every running step one in a worker,
so the pool is sized from the process's concurrency and waits for a free connection instead of
failing the request.
"""

from __future__ import annotations

import select
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hiredis
import redis
from redis._parsers.encoders import Encoder
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.connection import PythonRespSerializer
from redis.retry import Retry

from regina.config import Settings, environment

#: Connections beside one per concurrent request or step: listeners, heartbeats, sweeps.
HEADROOM = 16
#: A web process's concurrent requests (gunicorn `--worker-connections`, see regina/cli/serve.py).
WEB_CONCURRENCY = 1000
#: Seconds a greenlet waits for a free connection before its command fails.
POOL_WAIT = 30.0
#: Seconds a health probe waits for Redis: it must answer before the platform's probe gives up.
PROBE_TIMEOUT = 2.0


class CommandPacker:
    """Pack a command with hiredis alone when it can: redis-py 8 runs every argument through its
    Python `Encoder` first (≈ 0.7 µs each: 20 µs for a 27-argument EVALSHA against 3.4 µs
    for hiredis on its own; a chat's scripts and events carry ≈ 80 arguments). hiredis takes
    str (as strict UTF-8), bytes, int and float (as `repr`), as the Encoder does; anything else
    (memoryview, bool, None) and command names with a space in them go to redis-py's own
    packer, which packs them or raises its `DataError` as before. A connection's
    `command_packer` (redis-py's hook for it)."""

    def __init__(self) -> None:
        self._fallback = PythonRespSerializer(6000, Encoder("utf-8", "strict", False).encode)  # type: ignore[no-untyped-call]

    def pack(self, *args: Any) -> list[bytes]:
        name = args[0]
        if isinstance(name, str) and " " not in name:
            try:
                return [hiredis.pack_command(args)]
            except TypeError:
                pass
        return self._fallback.pack(*args)  # type: ignore[no-untyped-call, no-any-return]


#: One for every connection (it keeps no state).
PACKER = CommandPacker()


def connect(url: str, concurrency: int = WEB_CONCURRENCY) -> redis.Redis:
    """A client returning `str` values, with a pool for `concurrency` concurrent users."""
    # TCP keepalive finds a dead peer over the network; a Unix socket (`unix://`, a Redis on
    # this host) has no such option and needs none: the kernel closes it with the server.
    tcp: dict[str, Any] = {} if url.startswith("unix://") else {"socket_keepalive": True}
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=concurrency + HEADROOM,
        timeout=POOL_WAIT,
        decode_responses=True,
        health_check_interval=30,
        socket_connect_timeout=5,
        # No read timeout (redis-py before 8; 8 made it 5 s): blocking commands wait as long as
        # they ask — a worker's reply up to workerReplyTimeout, XREAD BLOCK. A dead peer is found
        # by TCP keepalive and the health check; `?socket_timeout=` in the URL still applies.
        socket_timeout=None,
        retry_on_timeout=True,
        command_packer=PACKER,
        **tcp,
    )
    return redis.Redis(connection_pool=pool)


def probe_client(client: redis.Redis, timeout: float = PROBE_TIMEOUT) -> redis.Redis:
    """A client of the same server as `client` (URL, TLS, socket) whose connects and commands give
    up after `timeout` s, without retrying: a health check must answer while Redis does not,
    and `connect`'s clients have no read timeout (their blocking reads wait as long as asked)."""
    pool = client.connection_pool
    kwargs = {
        **pool.connection_kwargs,
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry_on_timeout": False,
        "retry": Retry(NoBackoff(), 0),
    }
    return redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kwargs))


def _original_poll() -> Any:
    """`select.poll` as the OS gives it, also under gevent's monkey patching."""
    try:
        from gevent.monkey import get_original
    except ImportError:  # pragma: no cover - gevent is a dependency
        return select.poll
    return get_original("select", "poll")


def _install_native_readiness_check() -> None:
    """Check a pooled connection for stray data with the OS's `poll`, not gevent's.

    redis-py's pool checks every connection it hands out (`ensure_connection` → `can_read(0)`)
    with a `select.poll()` made per check. Under gevent's patching that is gevent's poll, which
    builds watchers on the hub: 13 µs a check against 0.9 µs for the OS's poll, about five
    checks per chat in a worker. A zero-timeout poll never blocks, so the OS's one is safe in a
    greenlet; a check that may wait (a timeout) keeps redis-py's own function.
    """
    try:
        from redis._parsers import hiredis as parser
    except ImportError:  # pragma: no cover - other redis-py layouts keep their own check
        return
    patched = getattr(parser, "_socket_can_read", None)
    if patched is None or getattr(patched, "regina_native", False):
        return
    native_poll = _original_poll()
    pollin = select.POLLIN

    def _socket_can_read(sock: Any, timeout: float) -> bool:
        if timeout != 0 or (hasattr(sock, "pending") and sock.pending()):
            return bool(patched(sock, timeout))
        poller = native_poll()
        poller.register(sock, pollin)
        return bool(poller.poll(0))

    _socket_can_read.regina_native = True  # type: ignore[attr-defined]
    parser._socket_can_read = _socket_can_read


if hasattr(select, "poll"):
    _install_native_readiness_check()


_SCRIPTS: weakref.WeakKeyDictionary[redis.Redis, dict[str, Script]] = weakref.WeakKeyDictionary()


def script(client: redis.Redis, source: str) -> Script:
    """`client.register_script(source)`, made once per client and script: every chat step builds
    its run's publisher, context and store afresh, and each registration hashes its script (eight
    per step, 30 µs of the worker's CPU)."""
    scripts = _SCRIPTS.get(client)
    if scripts is None:
        scripts = _SCRIPTS[client] = {}
    found = scripts.get(source)
    if found is None:
        found = scripts[source] = client.register_script(source)
    return found


REDIS_URL_FILE = "redis.url"
"""File under `dataDir` where `regina up` writes the URL of the Redis it started."""


def embedded_redis_url(settings: Settings, environ: Mapping[str, str] | None = None) -> str:
    """The Redis to use: REDIS_URL or config `redis` when given, else the one a running `regina up`
    wrote down (so `regina flower` and `local_coordinator()` find it), else the default."""
    env = environment() if environ is None else environ
    if env.get("REDIS_URL") or "redis" in settings.model_fields_set:
        return settings.redis
    try:
        return (Path(settings.data_dir) / REDIS_URL_FILE).read_text().strip() or settings.redis
    except OSError:
        return settings.redis
