"""Wire the core objects a web process uses (one set per Flask app)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import redis

from regina.config import Settings
from regina.lifecycle import Coordinator
from regina.redis_conn import probe_client
from regina.registry import AgentRegistry
from regina.registry_sync import RegistryFollower, start_reload_listener, warn_missing_keys
from workers.local import local_coordinator


@dataclass
class Services:
    """The registry, Redis client and coordinator behind the HTTP API."""

    settings: Settings
    registry: AgentRegistry
    client: redis.Redis
    coordinator: Coordinator
    follower: RegistryFollower

    @functools.cached_property
    def probe(self) -> redis.Redis:
        """`client`'s server with a short timeout, for /healthz (made at its first use)."""
        return probe_client(self.client)


def build_services(settings: Settings) -> Services:
    """Load the registry and connect to Redis, storage and the broker; follow registry reloads."""
    coordinator = local_coordinator(settings)
    follower = start_reload_listener(coordinator.r, coordinator.registry)
    warn_missing_keys(coordinator.registry)
    return Services(settings, coordinator.registry, coordinator.r, coordinator, follower)
