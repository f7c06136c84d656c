"""The public JSON of a run record (SPEC §12), as `GET /runs/<runId>` shows it."""

from __future__ import annotations

from typing import Any

from regina.instances import iso
from regina.runtime.sink import RunProgress


def public(run_id: str, h: dict[str, str]) -> dict[str, Any]:
    """The SPEC §12 JSON of a run record."""

    # The three times come from the Redis clock as the web (created) and the worker (started,
    # finished) each keep it (regina/clock.py), a millisecond or so apart: shown in their order.
    floor = 0.0
    times: dict[str, str | None] = {}
    for name in ("createdAt", "startedAt", "finishedAt"):
        if h.get(name):
            floor = max(floor, float(h[name]))
            times[name] = iso(floor)
        else:
            times[name] = None

    data: dict[str, Any] = {
        "runId": run_id,
        "instanceId": h.get("instanceId", ""),
        "status": h.get("status", "queued"),
        **times,
        "usage": _usage(h),
    }
    if h.get("finishReason"):
        data["finishReason"] = h["finishReason"]
    if h.get("error"):
        data["error"] = h["error"]
    return data


def _usage(h: dict[str, str]) -> dict[str, int]:
    """An ended run's usage; a running one's so far: what its completed model calls spent, as
    its attempts recorded them (`spent`, `RunProgress`) — its end writes the final usage."""
    if h.get("status") == "running":
        return RunProgress.decode(h.get("spent", "")).usage.as_dict()
    return {"promptTokens": int(h.get("promptTokens", 0)), "completionTokens": int(h.get("completionTokens", 0))}
