"""Placement strategies: which live member gets a new or re-homed instance (SPEC §6)."""

from __future__ import annotations

import random

import redis

from regina import keys
from regina.cluster.membership import live_members, live_members_and_turn
from regina.errors import Unavailable


def choose(members: dict[str, int], strategy: str, counter: int = 0) -> str:
    """Pick a member id from `{member: instance_count}` (pure; `counter` drives round-robin)."""
    if not members:
        raise Unavailable("no live worker: start one with `regina worker` (or `regina up`)")
    ids = sorted(members)
    if strategy == "least-loaded":
        return min(ids, key=lambda m: (members[m], ids.index(m)))
    if strategy == "random":
        return random.choice(ids)
    return ids[counter % len(ids)]


def place(client: redis.Redis, strategy: str, prefer: str | None = None) -> str:
    """Choose a live member; `prefer` wins when it is alive (keeps a VFS where it already is)."""
    if strategy == "round-robin" and not prefer:
        members, turn = live_members_and_turn(client)  # one round trip
        return choose(members, strategy, turn)
    members = live_members(client)
    if prefer and prefer in members:
        return prefer
    counter = int(client.incr(keys.PLACEMENT_RR)) if strategy == "round-robin" else 0
    return choose(members, strategy, counter)
