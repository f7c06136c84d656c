"""Unguessable ids: instances (prefixed with the definition name), runs and reply tokens."""

from __future__ import annotations

import re
import secrets

_INSTANCE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}-[0-9a-f]{24}$")


def new_instance_id(definition_id: str) -> str:
    """`<definition>-<96 random bits in hex>`."""
    return f"{definition_id}-{secrets.token_hex(12)}"


def is_valid_instance_id(value: str) -> bool:
    """True when `value` has the shape of an instance id (cheap check before touching Redis)."""
    return bool(_INSTANCE_RE.match(value))


#: Every run id starts with this. A chat step message built by the web (workers/dispatcher.py)
#: has its run's id as its broker delivery tag, which no other tag starts with.
RUN_PREFIX = "run-"


_RUN_RE = re.compile(r"^run-[A-Za-z0-9_-]{1,64}$")


def is_valid_run_id(value: str) -> bool:
    """True when `value` can be a run id: no ':' (a run's other keys, `regina:run:<id>:events`,
    must not be read as its record) and not absurdly long."""
    return bool(_RUN_RE.match(value))


def new_run_id() -> str:
    """A run id: `run-<96 random bits>`."""
    return f"{RUN_PREFIX}{secrets.token_hex(12)}"


def new_token() -> str:
    """A reply token for a command sent to a worker."""
    return secrets.token_hex(10)
