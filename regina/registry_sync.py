"""Keep every web and worker process on the same agent registry (SPEC §2).

A reload asked of any process (`POST /admin/agents/reload`, or SIGHUP to a web or worker
process, debounced) bumps a registry version in Redis and announces it on a channel. Every
process follows: its listener reloads on the announcement and, because a pub/sub message can be
missed (a reconnect, a slow subscriber), also compares the version every `WAKE_SECONDS` and
reloads when it moved. A worker asked to attach an instance of an agent it does not know
reloads once before refusing (`AgentRegistry.get_or_reload`), so a web that saw a new file first cannot make
a spawn fail. Each swap is atomic; a failed rebuild keeps the old registry and is logged.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Mapping
from types import FrameType

import redis

from regina import keys
from regina.errors import ConfigError
from regina.outage import Outage
from regina.providers import missing_api_key
from regina.registry import AgentRegistry

log = logging.getLogger("regina.registry")

CHANNEL = keys.REGISTRY_RELOAD
WAKE_SECONDS = 1.0
"""How often the listener wakes without a message: it then compares its registry version with
Redis's (the bound on a missed announcement) and runs a due SIGHUP reload."""
SIGHUP_DEBOUNCE = 1.0
"""Seconds a SIGHUP waits for more signals (an editor saving several files) before reloading."""


class SharedLastGood:
    """`LastGoodTexts` in Redis (`keys.REGISTRY_GOOD`). Best effort: with Redis away a process
    keeps its own last good definitions, as it would without this."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def fetch(self, paths: list[str]) -> dict[str, str]:
        try:
            found = self.client.hmget(keys.REGISTRY_GOOD, paths)
        except redis.RedisError as exc:
            log.warning("could not read the last good agent definitions from Redis: %s", exc)
            return {}
        return {p: _text(t) for p, t in zip(paths, found, strict=True) if t is not None}

    def keep(self, texts: Mapping[str, str]) -> None:
        try:
            self.client.hset(keys.REGISTRY_GOOD, mapping=dict(texts))  # type: ignore[arg-type]  # str keys and values
        except redis.RedisError as exc:
            log.warning("could not share the last good agent definitions in Redis: %s", exc)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def announce_reload(client: redis.Redis) -> int:
    """Bump the registry version and tell every process; returns the new version."""
    version = int(client.incr(keys.REGISTRY_VERSION))
    client.publish(CHANNEL, str(version))
    return version


class RegistryFollower:
    """One process's view of the shared registry version; reloads when it moves."""

    def __init__(self, client: redis.Redis, registry: AgentRegistry) -> None:
        self.client = client
        self.registry = registry
        self.seen = self._current()
        self._hup_at: float | None = None
        self._debounce = SIGHUP_DEBOUNCE

    def _current(self) -> int:
        try:
            return int(self.client.get(keys.REGISTRY_VERSION) or 0)
        except redis.RedisError:
            return -1

    def _reload(self, why: str) -> None:
        try:
            self.registry.reload()
            log.info("agent registry reloaded (%s): %d definition(s)", why, len(self.registry))
        except Exception:
            log.exception("agent registry reload failed; keeping the previous one")

    def check(self) -> bool:
        """Reload if another process reloaded since we last looked; True when it did."""
        current = self._current()
        if current < 0 or current == self.seen:
            return False
        self.seen = current
        self._reload(f"version {current}")
        return True

    def announce(self) -> None:
        """Make every other process reload (after this one did)."""
        self.seen = announce_reload(self.client)

    def reload_everywhere(self, why: str) -> None:
        """Reload here now and make every other process follow."""
        self._reload(why)
        self.announce()

    def listen_forever(self) -> None:
        """Reload on each announcement, and on a version change every POLL_SECONDS."""
        outage = Outage("registry reload listener", log)
        while True:
            try:
                pubsub = self.client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call,unused-ignore]
                pubsub.subscribe(CHANNEL)
                outage.ok()
                self.check()  # anything announced while we were not subscribed
                while True:
                    pubsub.get_message(timeout=WAKE_SECONDS)  # type: ignore[no-untyped-call,unused-ignore]
                    self._sighup_due()
                    self.check()
            except redis.RedisError as exc:
                outage.failed(exc)
                time.sleep(outage.delay())

    def install_sighup(self, debounce: float = SIGHUP_DEBOUNCE) -> None:
        """SIGHUP = reload everywhere, debounced (call from the process's main thread).

        The handler only notes the time: under gevent a signal handler runs in the event loop,
        where nothing may block. The listener performs the reload once `debounce` seconds have
        passed since the first signal (further signals until then are coalesced into it).
        """
        self._debounce = debounce
        signal.signal(signal.SIGHUP, self._on_sighup)

    def _on_sighup(self, signum: int, frame: FrameType | None) -> None:
        if self._hup_at is None:
            self._hup_at = time.monotonic()

    def _sighup_due(self) -> None:
        hup = self._hup_at
        if hup is not None and time.monotonic() - hup >= self._debounce:
            self._hup_at = None
            self.reload_everywhere("SIGHUP")


def start_reload_listener(client: redis.Redis, registry: AgentRegistry) -> RegistryFollower:
    """Share last good definitions through Redis (`SharedLastGood`) and follow registry reloads
    in a daemon thread (a greenlet under gevent)."""
    try:
        registry.share_last_good(SharedLastGood(client))
    except ConfigError as exc:  # agentsDir went away since the first load: the loaded one stays
        log.error("agent registry reload failed, keeping the loaded one: %s", exc)
    follower = RegistryFollower(client, registry)
    thread = threading.Thread(target=follower.listen_forever, name="regina-registry-reload", daemon=True)
    thread.start()
    return follower


def warn_missing_keys(registry: AgentRegistry) -> None:
    """A start-up WARNING for each agent whose provider's API key this process does not have."""
    for definition in registry.list():
        variable = missing_api_key(definition.model, definition.provider)
        if variable:
            log.warning(
                "agent %r (model %s): %s is not set; its chats will fail until it is",
                definition.id,
                definition.model,
                variable,
            )
