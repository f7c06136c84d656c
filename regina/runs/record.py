"""The public JSON of a run record (SPEC §12), as `GET /runs/<runId>` shows it."""

from __future__ import annotations

from typing import Any

from regina.instances import iso


def public(run_id: str, h: dict[str, str]) -> dict[str, Any]:
    """The SPEC §12 JSON of a run record."""

    def ts(name: str) -> str | None:
        return iso(float(h[name])) if h.get(name) else None

    data: dict[str, Any] = {
        "runId": run_id,
        "instanceId": h.get("instanceId", ""),
        "status": h.get("status", "queued"),
        "createdAt": ts("createdAt"),
        "startedAt": ts("startedAt"),
        "finishedAt": ts("finishedAt"),
        "usage": {
            "promptTokens": int(h.get("promptTokens", 0)),
            "completionTokens": int(h.get("completionTokens", 0)),
        },
    }
    if h.get("finishReason"):
        data["finishReason"] = h["finishReason"]
    if h.get("error"):
        data["error"] = h["error"]
    return data
