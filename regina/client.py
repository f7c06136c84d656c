"""Typed Python clients for the HTTP API: `ReginaClient` (sync) and `AsyncReginaClient`.

from regina.client import ReginaClient

with ReginaClient("http://127.0.0.1:3000") as regina:
    iid = regina.spawn("demo", idempotency_key="spawn-1")["instanceId"]
    print(regina.chat(iid, "write hello to /notes.txt")["text"])
    for event in regina.stream(iid, "run cat /notes.txt"):
        print(event["type"])
    run_id = regina.chat(iid, "think long", when_busy="queue")["runId"]
    regina.cancel(run_id)                  # {"cancelled": false, "status": "finished"} by now

Every error answer raises the `ClientError` of its status (also the core error of the same name,
so `except regina.errors.NotFound` works too) (`Unauthorized`, `BadRequest`,
`NotFound`, `Conflict` with the busy run's `run_id`, `PayloadTooLarge`, `Unprocessable`,
`TooManyRequests`, `Unavailable`); a server that cannot be reached raises `ConnectionFailed`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, cast

import httpx

from regina import errors
from regina.errors import ReginaError

WhenBusy = Literal["queue", "steer", "reject"]


class ClientError(ReginaError):
    """An error answer of the API; `status` is its HTTP status (0: no answer at all)."""

    status = 0

    def __init__(self, message: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.body = body or {}


class BadRequest(ClientError, errors.BadRequest):
    status = 400


class Unauthorized(ClientError):
    status = 401


class NotFound(ClientError, errors.NotFound):
    status = 404


class Conflict(ClientError, errors.Conflict):
    """409; with whenBusy "reject", `run_id` is the run in progress."""

    status = 409

    @property
    def run_id(self) -> str | None:
        value = self.body.get("runId")
        return str(value) if value else None


class PayloadTooLarge(ClientError, errors.PayloadTooLarge):
    status = 413


class Unprocessable(ClientError, errors.Unprocessable):
    """422: an Idempotency-Key reused with a different body."""

    status = 422


class TooManyRequests(ClientError):
    status = 429


class Unavailable(ClientError, errors.Unavailable):
    status = 503


class ConnectionFailed(ClientError):
    """The server could not be reached (refused, reset, timed out)."""


_BY_STATUS: dict[int, type[ClientError]] = {
    c.status: c
    for c in (
        BadRequest,
        Unauthorized,
        NotFound,
        Conflict,
        PayloadTooLarge,
        Unprocessable,
        TooManyRequests,
        Unavailable,
    )
}


def _raise_for(resp: httpx.Response) -> None:
    if resp.status_code < 400:
        return
    try:
        body = resp.json()
        body = body if isinstance(body, dict) else {}
    except ValueError:
        body = {}
    message = str(body.get("error", resp.text or resp.reason_phrase))
    raise _BY_STATUS.get(resp.status_code, ClientError)(message, body)


@dataclass
class _Call:
    """One request: what both clients send."""

    method: str
    path: str
    json: Any = None
    params: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)


def _with_key(call: _Call, key: str | None) -> _Call:
    if key is not None:
        call.headers["Idempotency-Key"] = key
    return call


def _chat_body(message: str, when_busy: WhenBusy) -> dict[str, Any]:
    return {"message": message} if when_busy == "queue" else {"message": message, "whenBusy": when_busy}


class _Routes:
    """The API's routes as `_Call`s (shared by the sync and the async client)."""

    @staticmethod
    def spawn(definition_id: str, key: str | None) -> _Call:
        return _with_key(_Call("POST", f"/agents/{definition_id}/instances"), key)

    @staticmethod
    def chat(instance_id: str, message: str, when_busy: WhenBusy, key: str | None, stream: bool) -> _Call:
        path = f"/instances/{instance_id}/chat" + ("/stream" if stream else "")
        return _with_key(_Call("POST", path, _chat_body(message, when_busy)), key)

    @staticmethod
    def steer(instance_id: str, message: str, key: str | None) -> _Call:
        return _with_key(_Call("POST", f"/instances/{instance_id}/steer", {"message": message}), key)


class ReginaClient:
    """Talks to any web process of a Regina cluster."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 600.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout)

    def _send(self, call: _Call) -> Any:
        try:
            resp = self._http.request(call.method, call.path, json=call.json, params=call.params, headers=call.headers)
        except httpx.TransportError as exc:
            raise ConnectionFailed(f"cannot reach {self._http.base_url}: {exc}") from exc
        _raise_for(resp)
        return None if resp.status_code == 204 else resp.json()

    def _json(self, method: str, path: str, body: Any = None, params: dict[str, Any] | None = None) -> Any:
        return self._send(_Call(method, path, body, params))

    def _ndjson(self, call: _Call) -> Iterator[dict[str, Any]]:
        try:
            with self._http.stream(
                call.method, call.path, json=call.json, params=call.params, headers=call.headers
            ) as r:
                if r.status_code >= 400:
                    r.read()
                    _raise_for(r)
                for line in r.iter_lines():
                    if line:
                        yield json.loads(line)
        except httpx.TransportError as exc:
            raise ConnectionFailed(f"cannot reach {self._http.base_url}: {exc}") from exc

    # -- agents and instances -------------------------------------------------------------------

    def agents(self) -> list[dict[str, Any]]:
        """Every agent definition."""
        return cast(list[dict[str, Any]], self._json("GET", "/agents"))

    def spawn(self, definition_id: str, idempotency_key: str | None = None) -> dict[str, Any]:
        """Start a new instance (the same key answers the same instance for 24 h)."""
        return cast(dict[str, Any], self._send(_Routes.spawn(definition_id, idempotency_key)))

    def instance(self, instance_id: str) -> dict[str, Any]:
        """The instance's status, member, epoch and usage."""
        return cast(dict[str, Any], self._json("GET", f"/instances/{instance_id}"))

    def instances(self, definition_id: str | None = None, **filters: Any) -> list[dict[str, Any]]:
        """Instances of one definition, or one page of the fleet (filters: status, member, limit,
        cursor)."""
        path = f"/agents/{definition_id}/instances" if definition_id else "/instances"
        return cast(list[dict[str, Any]], self._json("GET", path, params=filters or None))

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

    # -- runs ------------------------------------------------------------------------------------

    def chat(
        self, instance_id: str, message: str, when_busy: WhenBusy = "queue", idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """Send a message and wait for the answer: {text, usage, runId, finishReason}."""
        return cast(dict[str, Any], self._send(_Routes.chat(instance_id, message, when_busy, idempotency_key, False)))

    def stream(
        self, instance_id: str, message: str, when_busy: WhenBusy = "queue", idempotency_key: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Send a message and yield its events as they happen (each has `seq` and `runId`)."""
        return self._ndjson(_Routes.chat(instance_id, message, when_busy, idempotency_key, True))

    def events(self, run_id: str, after: int = 0) -> Iterator[dict[str, Any]]:
        """Re-attach to a run: its events after `after`, then the live ones until it ends."""
        return self._ndjson(_Call("GET", f"/runs/{run_id}/events", params={"after": after}))

    def run(self, run_id: str) -> dict[str, Any]:
        """The run's record: status, times, usage (finishReason, error)."""
        return cast(dict[str, Any], self._json("GET", f"/runs/{run_id}"))

    def cancel(self, run_id: str) -> dict[str, Any]:
        """Stop a run: {"cancelled": true}, or {"cancelled": false, "status"} when it had ended."""
        return cast(dict[str, Any], self._json("POST", f"/runs/{run_id}/cancel"))

    def steer(self, instance_id: str, message: str, idempotency_key: str | None = None) -> dict[str, Any]:
        """Queue a message for the running loop's next step boundary: {queued, steerId}."""
        return cast(dict[str, Any], self._send(_Routes.steer(instance_id, message, idempotency_key)))

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


class AsyncReginaClient:
    """The same API for asyncio code (`await regina.chat(…)`, `async for e in regina.stream(…)`)."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 600.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout)

    async def _send(self, call: _Call) -> Any:
        try:
            resp = await self._http.request(
                call.method, call.path, json=call.json, params=call.params, headers=call.headers
            )
        except httpx.TransportError as exc:
            raise ConnectionFailed(f"cannot reach {self._http.base_url}: {exc}") from exc
        _raise_for(resp)
        return None if resp.status_code == 204 else resp.json()

    async def _ndjson(self, call: _Call) -> AsyncIterator[dict[str, Any]]:
        try:
            async with self._http.stream(
                call.method, call.path, json=call.json, params=call.params, headers=call.headers
            ) as r:
                if r.status_code >= 400:
                    await r.aread()
                    _raise_for(r)
                async for line in r.aiter_lines():
                    if line:
                        yield json.loads(line)
        except httpx.TransportError as exc:
            raise ConnectionFailed(f"cannot reach {self._http.base_url}: {exc}") from exc

    async def spawn(self, definition_id: str, idempotency_key: str | None = None) -> dict[str, Any]:
        """Start a new instance."""
        return cast(dict[str, Any], await self._send(_Routes.spawn(definition_id, idempotency_key)))

    async def instance(self, instance_id: str) -> dict[str, Any]:
        """The instance's status, member, epoch and usage."""
        return cast(dict[str, Any], await self._send(_Call("GET", f"/instances/{instance_id}")))

    async def chat(
        self, instance_id: str, message: str, when_busy: WhenBusy = "queue", idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """Send a message and wait for the answer: {text, usage, runId, finishReason}."""
        call = _Routes.chat(instance_id, message, when_busy, idempotency_key, False)
        return cast(dict[str, Any], await self._send(call))

    def stream(
        self, instance_id: str, message: str, when_busy: WhenBusy = "queue", idempotency_key: str | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Send a message and yield its events as they happen."""
        return self._ndjson(_Routes.chat(instance_id, message, when_busy, idempotency_key, True))

    def events(self, run_id: str, after: int = 0) -> AsyncIterator[dict[str, Any]]:
        """Re-attach to a run's events."""
        return self._ndjson(_Call("GET", f"/runs/{run_id}/events", params={"after": after}))

    async def run(self, run_id: str) -> dict[str, Any]:
        """The run's record."""
        return cast(dict[str, Any], await self._send(_Call("GET", f"/runs/{run_id}")))

    async def cancel(self, run_id: str) -> dict[str, Any]:
        """Stop a run."""
        return cast(dict[str, Any], await self._send(_Call("POST", f"/runs/{run_id}/cancel")))

    async def steer(self, instance_id: str, message: str, idempotency_key: str | None = None) -> dict[str, Any]:
        """Queue a steering message: {queued, steerId}."""
        return cast(dict[str, Any], await self._send(_Routes.steer(instance_id, message, idempotency_key)))

    async def delete(self, instance_id: str) -> None:
        """Remove the instance."""
        await self._send(_Call("DELETE", f"/instances/{instance_id}"))

    async def aclose(self) -> None:
        """Close the HTTP connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncReginaClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
