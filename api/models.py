"""Pydantic models of the HTTP API's bodies: they parse requests and document every shape.

`api.openapi.documented` puts them on each route, and `/openapi.json` is generated from them
(SPEC §12), so the document describes what the routes really accept and answer. Wire names are
camelCase, as everywhere in the API.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

from regina.runtime.events import Event


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow")


class Error(BaseModel):
    """Every error: a clear message naming what was wrong."""

    error: str


class BusyError(Error):
    """409: the instance is busy with a run and the chat said `whenBusy: reject` (the run's id is
    also in the X-Run-Id header); another conflict has no runId."""

    runId: str | None = Field(None, description="The run in progress, to follow or cancel.")


# -- requests ------------------------------------------------------------------------------------


#: A character `str.strip()` keeps (one not `str.isspace()`): the server refuses a message of only
#: whitespace (`Coordinator.validate_message`), and this pattern refuses exactly those, in Python,
#: pydantic and ECMA-262 alike (their `\S` differ: on \x1c-\x1f, \x85 and \ufeff).
NOT_BLANK = r"[^\t\n\v\f\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"


class MessageBody(_Wire):
    """A steer's body."""

    message: str = Field(
        min_length=1,
        pattern=NOT_BLANK,
        description="The message (not only whitespace; at most limits.maxMessageChars).",
    )


class ChatBody(MessageBody):
    """A chat's body."""

    whenBusy: Literal["queue", "steer", "reject"] = Field(
        "queue",
        description="While a run is in progress: queue after it, steer it with this message, or reject (409).",
    )


class IdempotencyHeaders(BaseModel):
    """The same key and body within 24 h do the work once; the same key with another body is 422."""

    model_config = ConfigDict(populate_by_name=True)

    idempotency_key: str | None = Field(
        None, alias="Idempotency-Key", min_length=1, max_length=255, description="Any string, scoped per route."
    )


class FleetQuery(BaseModel):
    """Filters and page of `GET /instances`."""

    agent: str | None = Field(None, description="Only instances of this agent definition.")
    status: Literal["started", "suspending", "suspended"] | None = None
    member: str | None = Field(
        None, description="Only instances this live worker (member id) holds: none for a dead one, none suspended."
    )
    limit: int = Field(100, ge=1, le=1000, description="Page size.")
    cursor: str | None = Field(None, description="The X-Next-Cursor of the previous page.")


class HealthQuery(BaseModel):
    """What `GET /healthz` checks."""

    ready: bool = Field(False, description="Readiness: also need a live worker (true/false, 1/0, yes/no, on/off).")


class EventsQuery(BaseModel):
    """Where a re-attach starts."""

    after: int = Field(0, ge=0, le=10**18 - 1, description="Replay the events after this seq (at most 18 digits).")


class SpawnBody(RootModel[dict[str, Any]]):
    """Optional: a JSON object whose fields are ignored (SPEC gives spawn none); anything else
    is a 400 and spawns nothing. With an Idempotency-Key, a retry with another body is 422."""


# -- responses -----------------------------------------------------------------------------------


class Usage(BaseModel):
    """Tokens spent."""

    promptTokens: int
    completionTokens: int


class Agent(BaseModel):
    """An agent definition as the API shows it."""

    id: str
    name: str
    description: str
    model: str
    provider: str
    tools: list[str]
    delegates: list[str]
    greeting: str | None
    ready: bool | None = Field(None, description="False when the provider's API key is not set (see missingKey).")
    missingKey: str | None = Field(None, description="The environment variable of the missing API key (not ready).")


class Agents(RootModel[list[Agent]]):
    """Every agent definition."""


class Instance(BaseModel):
    """An instance."""

    instanceId: str
    definitionId: str
    status: Literal["started", "suspending", "suspended"]
    createdAt: str


class Instances(RootModel[list[Instance]]):
    """Instances of one agent."""


class InstanceDetail(Instance):
    """An instance with its owner and spend (`GET /instances/<id>` and the fleet view)."""

    member: str | None = Field(
        description="The live worker holding it; null when suspended or when its worker died (an orphan, "
        "still started: the next request moves it)."
    )
    epoch: int
    lastActive: str
    lastActiveAt: str | None = Field(None, description="The same as lastActive.")
    vfsBytes: int = Field(
        description="Bytes of its filesystem: while started, its file on its worker's disk (written within "
        "seconds of a step; a VFS not kept in a file: its last backup's); once suspended, its last backup's."
    )
    usage: Usage
    runningRun: str | None = None


class Fleet(RootModel[list[InstanceDetail]]):
    """A page of the fleet; the next page's cursor is in the X-Next-Cursor header."""


class ChatAnswer(BaseModel):
    """A sync chat's answer."""

    text: str
    usage: Usage
    runId: str
    finishReason: str


class RunAccepted(BaseModel):
    """202 from a sync chat whose run outlived `limits.requestTimeout`: it goes on. Follow it at
    `run` (`GET /runs/<runId>`, also the `Location` header) or `events` (NDJSON, replay + live)."""

    runId: str
    instanceId: str
    status: Literal["queued", "running"]
    run: str
    events: str


class SteerReceipt(BaseModel):
    """A queued steering message; `steer-applied` with this steerId follows when it is used."""

    queued: bool
    steerId: str


class Suspending(BaseModel):
    """202 from a suspend: the owner is still finishing a running step; the instance's status
    says when it is suspended."""

    instanceId: str
    status: Literal["suspending"]


class Run(BaseModel):
    """A run (one chat)."""

    runId: str
    instanceId: str
    status: Literal["queued", "running", "finished", "failed", "cancelled"]
    createdAt: str | None
    startedAt: str | None
    finishedAt: str | None
    usage: Usage
    finishReason: str | None = None
    error: str | None = None


class CancelAnswer(BaseModel):
    """202 `{cancelled: true}`, or 200 `{cancelled: false, status}` for an ended run."""

    cancelled: bool
    status: Literal["finished", "failed", "cancelled"] | None = Field(None, description="How the run ended.")


class RunEvent(RootModel[Event]):
    """One line of a run's NDJSON stream (SPEC §4): its `type` says which; every line also has the
    run's `runId`, and each event its `seq` (the `after` of a re-attach)."""

    model_config = ConfigDict(
        json_schema_extra={
            "properties": {
                "seq": {"type": "integer", "minimum": 1, "description": "The event's number in its run."},
                "runId": {"type": "string", "description": "The run."},
            }
        }
    )


class RunEvents(RootModel[list[RunEvent]]):
    """application/x-ndjson: the run's events, one JSON object per line, flushed as produced; the
    last is `finish` or `error`."""


class Messages(RootModel[list[dict[str, Any]]]):
    """The conversation, oldest first."""


class Health(BaseModel):
    """Liveness (and readiness with ?ready=true)."""

    status: str
    workers: int | None = None
    agents: int | None = None
    error: str | None = None


class RegistryErrors(RootModel[list[dict[str, Any]]]):
    """Definition files that could not be loaded."""


class Reloaded(BaseModel):
    """The agents after a registry reload."""

    agents: list[str]
    errors: list[dict[str, Any]]


class Index(BaseModel):
    """`GET /`: where to go from here."""

    name: str
    docs: str
    openapi: str
    health: str
    metrics: str


class OpenAPIDocument(RootModel[dict[str, Any]]):
    """This OpenAPI 3.1 document."""


class Text(RootModel[str]):
    """A text answer (its media type says which)."""
