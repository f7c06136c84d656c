"""A typed Python client for the HTTP API (spawn, chat, stream, steer, …).

from regina.client import ReginaClient

with ReginaClient("http://127.0.0.1:3000") as regina:
    iid = regina.spawn("demo")["instanceId"]
    print(regina.chat(iid, "write hello to /notes.txt")["text"])
    for event in regina.stream(iid, "run cat /notes.txt"):
        print(event["type"])
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import TracebackType
from typing import Any, cast

import httpx

from regina.errors import BadRequest, Conflict, NotFound, PayloadTooLarge, ReginaError, Unavailable

_ERRORS: dict[int, type[ReginaError]] = {
    400: BadRequest,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    503: Unavailable,
}


class ReginaClient:
    """Talks to any web process of a Regina cluster; raises the ReginaError matching each 4xx/5xx."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 600.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout)

    # -- plumbing ------------------------------------------------------------------------------

    def _check(self, resp: httpx.Response) -> httpx.Response:
        if resp.status_code >= 400:
            try:
                message = str(resp.json().get("error", resp.text))
            except ValueError:
                message = resp.text
            raise _ERRORS.get(resp.status_code, ReginaError)(message)
        return resp

    def _json(self, method: str, path: str, body: Any = None) -> Any:
        resp = self._check(self._http.request(method, path, json=body))
        return None if resp.status_code == 204 else resp.json()

    # -- agents and instances -------------------------------------------------------------------

    def agents(self) -> list[dict[str, Any]]:
        """Every agent definition."""
        return cast(list[dict[str, Any]], self._json("GET", "/agents"))

    def spawn(self, definition_id: str) -> dict[str, Any]:
        """Start a new instance; returns {instanceId, definitionId, status, createdAt}."""
        return cast(dict[str, Any], self._json("POST", f"/agents/{definition_id}/instances"))

    def instance(self, instance_id: str) -> dict[str, Any]:
        """The instance's status, member and epoch."""
        return cast(dict[str, Any], self._json("GET", f"/instances/{instance_id}"))

    def instances(self, definition_id: str | None = None) -> list[dict[str, Any]]:
        """Instances of one definition, or the whole fleet."""
        path = f"/agents/{definition_id}/instances" if definition_id else "/instances"
        return cast(list[dict[str, Any]], self._json("GET", path))

    def heartbeat(self, instance_id: str) -> None:
        """Reset the idle timer."""
        self._json("POST", f"/instances/{instance_id}/heartbeat")

    def suspend(self, instance_id: str) -> None:
        """Back up and release the instance."""
        self._json("POST", f"/instances/{instance_id}/suspend")

    def resume(self, instance_id: str) -> None:
        """Start a suspended instance (on any worker)."""
        self._json("POST", f"/instances/{instance_id}/resume")

    def delete(self, instance_id: str) -> None:
        """Remove the instance with its files, backup and keys."""
        self._json("DELETE", f"/instances/{instance_id}")

    # -- conversation ------------------------------------------------------------------------

    def chat(self, instance_id: str, message: str) -> dict[str, Any]:
        """Send a message and wait for the answer: {text, usage}."""
        return cast(dict[str, Any], self._json("POST", f"/instances/{instance_id}/chat", {"message": message}))

    def _ndjson(self, method: str, path: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        with self._http.stream(method, path, **kwargs) as resp:
            if resp.status_code >= 400:
                resp.read()
                self._check(resp)
            for line in resp.iter_lines():
                if line:
                    yield json.loads(line)

    def stream(self, instance_id: str, message: str) -> Iterator[dict[str, Any]]:
        """Send a message and yield its events as they happen (each has `seq` and `runId`)."""
        return self._ndjson("POST", f"/instances/{instance_id}/chat/stream", json={"message": message})

    def events(self, run_id: str, after: int = 0) -> Iterator[dict[str, Any]]:
        """Re-attach to a run: its events after `after`, then the live ones until it ends."""
        return self._ndjson("GET", f"/runs/{run_id}/events", params={"after": after})

    def steer(self, instance_id: str, message: str) -> None:
        """Queue a message the running loop sees at its next step boundary."""
        self._json("POST", f"/instances/{instance_id}/steer", {"message": message})

    def reload(self) -> dict[str, Any]:
        """Reload the agent registry in every web and worker process: {agents, errors}."""
        return cast(dict[str, Any], self._json("POST", "/admin/agents/reload"))

    def messages(self, instance_id: str) -> list[dict[str, Any]]:
        """The conversation, oldest first."""
        return cast(list[dict[str, Any]], self._json("GET", f"/instances/{instance_id}/messages"))

    # -- lifetime ----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    def __enter__(self) -> ReginaClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
