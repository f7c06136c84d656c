"""Steering messages with receipts (SPEC §4, §12).

A steer is queued in Redis (`keys.steering`, never in a process's memory) as JSON
`{"steerId", "message"}`; the run that takes it at a step boundary emits
`{"type": "steer-applied", "steerId", "message"}` once the message is in the conversation.
Queued entries survive a worker crash and, with AOF, a Redis restart. The atomic pushes live in
`regina.runs.store` (a steer is queued in the same script that answers an idempotent retry or a
`whenBusy: "steer"` chat).
"""

from __future__ import annotations

import json
import secrets

from regina.runtime.sink import Steer


def encode(steer: Steer) -> str:
    """The list entry stored in Redis."""
    return json.dumps({"steerId": steer.steer_id, "message": steer.message}, separators=(",", ":"))


def encode_all(steers: list[Steer]) -> list[str]:
    """List entries of several steers, in their order."""
    return [encode(s) for s in steers]


def new_steer(message: str) -> Steer:
    """A steer with a fresh unguessable id."""
    return Steer(f"steer-{secrets.token_hex(8)}", message)


def decode(entry: str) -> Steer:
    """Parse a list entry (a bare string from before receipts becomes a steer without id)."""
    try:
        data = json.loads(entry)
    except ValueError:
        return Steer("", entry)
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        return Steer(str(data.get("steerId", "")), data["message"])
    return Steer("", entry)


def decode_all(entries: list[str]) -> list[Steer]:
    """Parse several list entries, oldest first."""
    return [decode(e) for e in entries]
