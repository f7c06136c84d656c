"""Typed Python clients for the HTTP API: `ReginaClient` (sync) and `AsyncReginaClient`.

from regina.client import ReginaClient

with ReginaClient("http://127.0.0.1:3000") as regina:
    iid = regina.spawn("demo", idempotency_key="spawn-1")["instanceId"]
    print(regina.chat(iid, "write hello to /notes.txt")["text"])
    for event in regina.stream(iid, "run cat /notes.txt"):
        print(event["type"])
    run_id = regina.chat(iid, "think long", when_busy="queue")["runId"]
    regina.cancel(run_id)                  # {"cancelled": false, "status": "finished"} by now
    for instance in regina.fleet(status="started"):   # every page of GET /instances
        print(instance["instanceId"])

Every error answer raises the `ClientError` of its status (also the core error of the same name, so
`except regina.errors.NotFound` works too) (`Unauthorized`, `BadRequest`, `NotFound`, `Conflict`
with the busy run's `run_id`, `PayloadTooLarge`, `Unprocessable`, `TooManyRequests` with
`retry_after`, `Unavailable`; `ClientError` for another status) and carries it in `status`; a
server that cannot be reached raises `ConnectionFailed`, an unusable URL `InvalidURL`, an argument
that cannot be sent (text that is not UTF-8, a token that is not visible ASCII) `InvalidArgument`
before anything is sent, an answer that is not the API's JSON (a proxy's 502 page) or not of the
shape the call answers (`agents()`, `instances()`, `fleet()`, `reload()`) `BadResponse`, and a
followed run that ends with an `error` event `RunFailed`. No httpx error leaves the client.

A sync chat whose run outlives the server's `limits.requestTimeout` is answered 202 by the
server; `chat()` then follows the run's events and returns the same {text, usage, runId,
finishReason} as a 200 would. Streams (`stream()`, `events()`) wait without a read timeout and,
when the connection drops before the run's `finish`/`error` event, re-attach at
`GET /runs/<runId>/events?after=<last seq>` (a few attempts with a short backoff, then
`ConnectionFailed`); the events they yield have no gap and no repeat. An answer with no event
after `after` for a run that has ended (`events(run_id, after=<its finish seq>)`) ends the
stream at once.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import re
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, cast
from urllib.parse import quote

import httpx

from regina import errors
from regina.errors import ReginaError

WhenBusy = Literal["queue", "steer", "reject"]

CONNECT_TIMEOUT = 10.0
"""Seconds to wait for a connection to the server."""
DEFAULT_TIMEOUT = 660.0
"""Seconds a request waits for its answer by default: longer than the server's default
`limits.requestTimeout` (600), so a long sync chat gets the server's 202 before this fires."""
RESUME_DELAYS = (0.25, 0.5, 1.0, 2.0)
"""Seconds before each attempt to re-attach a dropped stream (reset by every event received)."""
TERMINAL = frozenset({"finish", "error"})
"""The event types that end a run's stream."""
ENDED = frozenset({"finished", "failed", "cancelled"})
"""The statuses of a run that has ended (`GET /runs/<id>`)."""


class ClientError(ReginaError):
    """An error answer of the API; `status` is its HTTP status (0: no answer at all), also for a
    status without a class of its own (500, 502, 405…); `body` is the API's JSON error body."""

    status = 0

    def __init__(self, message: str, body: dict[str, Any] | None = None, status: int | None = None) -> None:
        ReginaError.__init__(self, message)  # not super(): a core error's own arguments are set here
        self.body = body or {}
        if status is not None:
            self.status = status


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


class TooManyRequests(ClientError, errors.TooManyRequests):
    """429: the instance's backlog of runs or steering messages is full; `retry_after` is the
    answer's Retry-After in seconds (1 when it had none)."""

    status = 429
    retry_after = 1


class Unavailable(ClientError, errors.Unavailable):
    status = 503


class ConnectionFailed(ClientError):
    """The server could not be reached (refused, reset, timed out), or a stream stayed cut."""


class InvalidArgument(ClientError, errors.BadRequest):
    """An argument the client cannot send, so nothing was sent (`status` 0): text that is not
    UTF-8 (a command-line argument that was not: Python keeps its bytes as lone surrogates), a
    token or Idempotency-Key that cannot be an HTTP header value."""


class InvalidURL(InvalidArgument):
    """The server URL (or a path built from an argument) is not a usable URL."""


class BadResponse(ClientError):
    """An answer that is not the API's: a body or stream line that is not JSON (a proxy's page,
    another server on that port), or JSON of another shape than the call's (a list of agents
    that is not a list of objects); `status` is the answer's HTTP status."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message, status=status)


class RunFailed(ClientError):
    """A followed run ended with an `error` event; `body` is that event."""


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


def _retry_after(resp: httpx.Response) -> int:
    """The Retry-After header in seconds (a number or an HTTP date); 1 when absent or unreadable."""
    value = resp.headers.get("Retry-After", "").strip()
    if value.isdigit():
        return int(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return 1
    return max(0, math.ceil(when.timestamp() - time.time()))


def _raise_for(resp: httpx.Response) -> None:
    """The ClientError of an error answer (status ≥ 400), with its status; BadResponse when its
    body is not the API's `{"error": …}` (a proxy's HTML page, another server)."""
    if resp.status_code < 400:
        return
    try:
        body = resp.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or "error" not in body:
        raise _not_json(resp, resp.text or resp.reason_phrase)
    exc = _BY_STATUS.get(resp.status_code, ClientError)(str(body["error"]), body, resp.status_code)
    if isinstance(exc, TooManyRequests):
        exc.retry_after = _retry_after(resp)
    raise exc


def _not_json(resp: httpx.Response, what: str) -> BadResponse:
    shown = " ".join(what.split())
    if shown.startswith("<"):  # a page (a proxy's 502, a login page): its title, not its markup
        title = re.search(r"<title[^>]*>(.*?)</title>", shown, re.IGNORECASE | re.DOTALL)
        shown = f"an HTML page ({title.group(1).strip()[:80]!r})" if title else "an HTML page"
    else:
        shown = repr(shown[:80] + ("…" if len(shown) > 80 else ""))
    return BadResponse(
        f"{resp.request.method} {resp.request.url} answered {resp.status_code} with something that is not "
        f"the Regina API's JSON: {shown}",
        resp.status_code,
    )


def _body(resp: httpx.Response) -> Any:
    """The answer's JSON body (None for 204 or an empty body); BadResponse when it is not JSON."""
    if resp.status_code == 204 or not resp.content:
        return None
    try:
        return resp.json()
    except ValueError:
        raise _not_json(resp, resp.text) from None


def _event(resp: httpx.Response, line: bytes) -> dict[str, Any]:
    """One NDJSON line as an event; BadResponse when it is not a JSON object in UTF-8."""
    try:
        event = json.loads(line.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError included
        event = None
    if not isinstance(event, dict):
        raise _not_json(resp, line.decode("utf-8", "replace"))
    return event


class _Lines:
    """A byte stream's NDJSON lines, split at b"\\n" only. Not httpx's `iter_lines()`: like
    `str.splitlines()` it also splits at U+2028, U+2029 and U+0085, which JSON leaves unescaped
    inside strings (a model's text may hold them), and would cut an event in two."""

    def __init__(self) -> None:
        self._head: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        """The lines this chunk ends (blank ones dropped); the rest waits for the next chunk."""
        *lines, rest = chunk.split(b"\n")
        if lines:
            lines[0] = b"".join([*self._head, lines[0]])
            self._head = []
        if rest:
            self._head.append(rest)
        return [line for line in lines if line.strip()]

    def end(self) -> list[bytes]:
        """A last line with no newline after it."""
        rest, self._head = b"".join(self._head), []
        return [rest] if rest.strip() else []


def _lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    lines = _Lines()
    for chunk in chunks:
        yield from lines.feed(chunk)
    yield from lines.end()


async def _alines(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    lines = _Lines()
    async for chunk in chunks:
        for line in lines.feed(chunk):
            yield line
    for line in lines.end():
        yield line


def _records(resp: httpx.Response, body: Any, key: str) -> list[dict[str, Any]]:
    """`body` when it is a list of objects that each name their `key` (a string); BadResponse
    otherwise, as the client promises for an answer of another shape (not an AttributeError in
    the caller's code)."""
    if not isinstance(body, list) or not all(isinstance(i, dict) and isinstance(i.get(key), str) for i in body):
        raise _not_json(resp, resp.text)
    return cast(list[dict[str, Any]], body)


def _items(resp: httpx.Response) -> list[dict[str, Any]]:
    """The instances of one page of `GET /instances` (a list; a wrapping object is accepted)."""
    body = _body(resp)
    if isinstance(body, dict):
        body = body.get("instances") or body.get("items") or []
    return _records(resp, body, "instanceId")


def _suspended(instance_id: str, resp: httpx.Response) -> dict[str, Any]:
    """A suspend's answer: done (204), or under way (202 {"status": "suspending"})."""
    body = _body(resp)
    if resp.status_code != 202:
        return {"instanceId": instance_id, "status": "suspended"}
    if not isinstance(body, dict) or not isinstance(body.get("status"), str):
        raise _not_json(resp, resp.text)
    return {"instanceId": instance_id, **body}


def _agents(resp: httpx.Response) -> list[dict[str, Any]]:
    """The definitions of `GET /agents`, each with its `id`."""
    return _records(resp, _body(resp), "id")


def _reloaded(resp: httpx.Response) -> dict[str, Any]:
    """The answer of a reload: {agents: [names], errors: [{file, error}]}."""
    body = _body(resp)
    if not (
        isinstance(body, dict)
        and isinstance(body.get("agents"), list)
        and all(isinstance(name, str) for name in body["agents"])
        and isinstance(body.setdefault("errors", []), list)
        and all(isinstance(err, dict) for err in body["errors"])
    ):
        raise _not_json(resp, resp.text)
    return body


@contextmanager
def _errors_of(base_url: httpx.URL | str, transport: bool = True) -> Iterator[None]:
    """httpx's exceptions as the client's: ConnectionFailed (unless `transport` is False: a
    stream re-attaches on those), InvalidURL, or ClientError."""
    try:
        yield
    except httpx.TransportError as exc:
        if not transport:
            raise
        raise ConnectionFailed(f"cannot reach {base_url}: {exc}") from exc
    except httpx.InvalidURL as exc:
        raise InvalidURL(f"invalid URL for {base_url}: {exc}") from exc
    except httpx.HTTPError as exc:
        raise ClientError(f"request to {base_url} failed: {exc}") from exc
    except UnicodeError as exc:  # text httpx cannot encode (a lone surrogate, a header's non-ASCII)
        raise InvalidArgument(f"cannot send the request to {base_url}: {exc}") from exc


def utf8_text(value: str, what: str, error: type[InvalidArgument] = InvalidArgument) -> str:
    """`value` when UTF-8 can encode it, which JSON bodies, paths and queries need; `error`
    otherwise, naming the first byte that was not UTF-8 in a command-line argument (Python
    keeps such a byte as a lone surrogate, U+DC80 to U+DCFF)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = ord(value[exc.start])
        shown = f"byte 0x{bad - 0xDC00:02X}" if 0xDC80 <= bad <= 0xDCFF else f"U+{bad:04X}"
        raise error(f"{what} is not UTF-8 text ({shown} at character {exc.start + 1})") from None
    return value


def _auth(token: str | None) -> dict[str, str]:
    """The Authorization header of `token` (none for None or ""); InvalidArgument unless it is
    visible ASCII, as a bearer token is: a newline or an accented letter would otherwise fail
    every request as "cannot reach" (or as an encoding error). The token is not shown."""
    if not token:
        return {}
    if not all("!" <= ch <= "~" for ch in token):
        raise InvalidArgument("the token must be visible ASCII characters (no spaces or line breaks)")
    return {"Authorization": f"Bearer {token}"}


def _checked_url(base_url: object) -> str:
    """The server URL; InvalidURL unless it starts with http:// or https:// and names a host
    and port that can be (httpx would take `localhost:3000`, `ftp://x`, `http://a..b/` or
    `http://` and fail each request with an unclear "cannot reach" or an encoding error)."""
    if not isinstance(base_url, str) or not base_url.strip().lower().startswith(("http://", "https://")):
        raise InvalidURL(f"the server URL must start with http:// or https://, got {base_url!r}")
    url = utf8_text(base_url.strip(), "the server URL", InvalidURL)
    try:
        parsed = httpx.URL(url)
        host = parsed.host
        named = bool(host) and (":" in host or not any(ch.isspace() or ch == "%" for ch in host))  # "%": quoted
        if named and ":" not in host:  # not an IPv6 address
            host.encode("idna")  # an empty label (a..b), one over 63 characters
    except (httpx.InvalidURL, UnicodeError) as exc:
        raise InvalidURL(f"the server URL {url!r} has no usable host name: {exc}") from None
    if not named:
        raise InvalidURL(f"the server URL {url!r} has no usable host name")
    if parsed.port is not None and not 0 < parsed.port <= 65535:
        raise InvalidURL(f"the server URL {url!r} has a port out of range (1 to 65535)")
    return url


def _timeouts(timeout: float | None) -> tuple[httpx.Timeout, httpx.Timeout]:
    """(requests, streams): a short connect timeout for both; streams wait for events forever."""
    connect = CONNECT_TIMEOUT if timeout is None else min(CONNECT_TIMEOUT, timeout)
    return httpx.Timeout(timeout, connect=connect), httpx.Timeout(None, connect=connect)


@dataclass
class _Call:
    """One request: what both clients send."""

    method: str
    path: str
    json: Any = None
    params: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)


def _with_key(call: _Call, key: str | None) -> _Call:
    """The call with its Idempotency-Key header; InvalidArgument for a key that cannot be one
    (an HTTP header is ASCII; a line break would end it)."""
    if key is not None:
        if not (isinstance(key, str) and key.isascii() and key.isprintable()):
            raise InvalidArgument(f"an Idempotency-Key must be printable ASCII characters, got {key!a}")
        call.headers["Idempotency-Key"] = key
    return call


def _message(message: str) -> str:
    return utf8_text(message, "the message") if isinstance(message, str) else message


def _chat_body(message: str, when_busy: WhenBusy) -> dict[str, Any]:
    message = _message(message)
    return {"message": message} if when_busy == "queue" else {"message": message, "whenBusy": when_busy}


FLEET_FILTERS = ("agent", "status", "member", "limit", "cursor")
"""The query parameters of `GET /instances`."""


def _fleet_params(filters: dict[str, Any]) -> dict[str, Any]:
    """The filters that are set; TypeError for a name `GET /instances` does not know (the server
    would ignore it and answer the whole fleet)."""
    unknown = sorted(set(filters) - set(FLEET_FILTERS))
    if unknown:
        raise TypeError(f"unknown instance filter(s) {', '.join(unknown)}: the filters are {', '.join(FLEET_FILTERS)}")
    return {
        k: utf8_text(v, f"the {k} filter") if isinstance(v, str) else v for k, v in filters.items() if v is not None
    }


def _seg(value: object, what: str) -> str:
    """`value` as one path segment, percent-quoted ("/", "?", "#", "%" and spaces included), so an
    id cannot reach another route; InvalidURL for None, "", "." and ".." (no id would fit)."""
    if not isinstance(value, str) or value in ("", ".", ".."):
        raise InvalidURL(f"{what} must be a non-empty string (not '.' or '..'), got {value!r}")
    return quote(utf8_text(value, what, InvalidURL), safe="")


class _Routes:
    """The API's routes as `_Call`s (shared by the sync and the async client); every id in a path
    is quoted as one segment (`_seg`)."""

    @staticmethod
    def agents() -> _Call:
        return _Call("GET", "/agents")

    @staticmethod
    def spawn(definition_id: str, key: str | None) -> _Call:
        return _with_key(_Call("POST", f"/agents/{_seg(definition_id, 'agent name')}/instances"), key)

    @staticmethod
    def instance(instance_id: str, action: str = "", method: str = "GET") -> _Call:
        return _Call(method, f"/instances/{_seg(instance_id, 'instance id')}" + (f"/{action}" if action else ""))

    @staticmethod
    def instances(definition_id: str | None, filters: dict[str, Any]) -> _Call:
        """A definition's instances (`GET /agents/<id>/instances`, all of them) or, with filters,
        one page of `GET /instances?agent=<id>&…`."""
        params = _fleet_params(filters)
        if definition_id is not None and not params:
            return _Call("GET", f"/agents/{_seg(definition_id, 'agent name')}/instances")
        if definition_id is not None:
            if params.setdefault("agent", definition_id) != definition_id:
                raise TypeError(f"instances({definition_id!r}, agent={params['agent']!r}): two different agents")
        return _Call("GET", "/instances", params=params or None)

    @staticmethod
    def chat(instance_id: str, message: str, when_busy: WhenBusy, key: str | None, stream: bool) -> _Call:
        path = f"/instances/{_seg(instance_id, 'instance id')}/chat" + ("/stream" if stream else "")
        return _with_key(_Call("POST", path, _chat_body(message, when_busy)), key)

    @staticmethod
    def steer(instance_id: str, message: str, key: str | None) -> _Call:
        path = f"/instances/{_seg(instance_id, 'instance id')}/steer"
        return _with_key(_Call("POST", path, {"message": _message(message)}), key)

    @staticmethod
    def events(run_id: str, after: int) -> _Call:
        return _Call("GET", f"/runs/{_seg(run_id, 'run id')}/events", params={"after": after})

    @staticmethod
    def run(run_id: str, action: str = "", method: str = "GET") -> _Call:
        return _Call(method, f"/runs/{_seg(run_id, 'run id')}" + (f"/{action}" if action else ""))

    @staticmethod
    def reload() -> _Call:
        return _Call("POST", "/admin/agents/reload")


@dataclass
class _Follow:
    """A run's stream as far as it was read: where to re-attach after a drop."""

    call: _Call
    run_id: str | None = None
    seq: int = 0
    failures: int = 0
    ended: bool = False
    answered: bool = False
    """Whether the server ever answered this stream (a drop before that: it cannot be reached)."""

    def opened(self, resp: httpx.Response) -> None:
        self.answered = True
        self.run_id = resp.headers.get("X-Run-Id") or self.run_id

    def seen(self, event: dict[str, Any]) -> bool:
        """Note an event; False for one already seen (a replay overlapping what came before)."""
        seq = event.get("seq")
        if isinstance(seq, int):
            if seq <= self.seq:
                return False
            self.seq = seq
        if event.get("runId"):
            self.run_id = str(event["runId"])
        self.failures = 0
        self.ended = event.get("type") in TERMINAL
        return True

    def retry(self, exc: Exception, base_url: httpx.URL) -> float:
        """The delay before re-attaching at the last seq; ConnectionFailed when there is no run to
        re-attach to (the drop came before its id) or the attempts are used up."""
        if self.run_id is None and not self.answered:
            raise ConnectionFailed(f"cannot reach {base_url}: {exc}") from exc
        if self.run_id is None or self.failures >= len(RESUME_DELAYS):
            tried = f" (re-attached {self.failures} time(s))" if self.failures else ""
            raise ConnectionFailed(f"stream from {base_url} broke{tried}: {exc}") from exc
        delay = RESUME_DELAYS[self.failures]
        self.failures += 1
        self.call = _Routes.events(self.run_id, self.seq)
        return delay


class _CutShort(httpx.TransportError):
    """A stream that ended without its run's `finish` or `error` event; `empty`: with no new
    event at all (what the server answers after an ended run's last seq, or a drop)."""

    def __init__(self, empty: bool) -> None:
        super().__init__("the stream ended before the run did")
        self.empty = empty


def _to_look_up(exc: httpx.TransportError, follow: _Follow) -> str | None:
    """The run to look up before re-attaching after a whole answer with no new event: when it
    has ended, the events after `after` were all read before (`events(run_id, after=<its finish
    seq>)`), and re-attaching would only get the same empty answer."""
    return follow.run_id if isinstance(exc, _CutShort) and exc.empty else None


def _ended(run: Any) -> bool:
    return isinstance(run, dict) and run.get("status") in ENDED


def _answer(final: dict[str, Any], run_id: str) -> dict[str, Any]:
    """A followed run's last event as a sync chat's answer; RunFailed for an `error` event."""
    if final.get("type") == "error":
        raise RunFailed(f"run {run_id} failed: {final.get('error', 'unknown error')}", final)
    return {
        "text": final.get("text", ""),
        "usage": final.get("usage") or {"promptTokens": 0, "completionTokens": 0},
        "runId": final.get("runId") or run_id,
        "finishReason": final.get("finishReason", "stop"),
    }


def _started_run(resp: httpx.Response) -> str:
    """The run id in a chat stream's headers; BadResponse without one."""
    run_id = resp.headers.get("X-Run-Id")
    if not run_id:
        raise BadResponse(f"{resp.request.method} {resp.request.url} answered {resp.status_code} without X-Run-Id")
    return str(run_id)


def _accepted_run(resp: httpx.Response) -> str:
    """The run id of a 202 chat answer."""
    body = _body(resp)
    run_id = (body.get("runId") if isinstance(body, dict) else None) or resp.headers.get("X-Run-Id")
    if not run_id:
        raise _not_json(resp, resp.text)
    return str(run_id)


class RunStream(Iterator[dict[str, Any]]):
    """A run's events as they come. The request is sent when reading starts (the first `next()`),
    like any generator's work: `run_id` is None until then, and is known once the answer's headers
    arrived (before the first event is yielded), e.g. to cancel the run from a KeyboardInterrupt
    handler around the loop."""

    def __init__(self, follow: _Follow, events: Iterator[dict[str, Any]]) -> None:
        self._follow = follow
        self._events = events

    @property
    def run_id(self) -> str | None:
        return self._follow.run_id

    def __iter__(self) -> RunStream:
        return self

    def __next__(self) -> dict[str, Any]:
        return next(self._events)

    def close(self) -> None:
        """Stop reading (closes the connection)."""
        close = getattr(self._events, "close", None)
        if close is not None:
            close()


class AsyncRunStream(AsyncIterator[dict[str, Any]]):
    """`RunStream` for asyncio: `async for event in regina.stream(…)`; `run_id` as there."""

    def __init__(self, follow: _Follow, events: AsyncIterator[dict[str, Any]]) -> None:
        self._follow = follow
        self._events = events

    @property
    def run_id(self) -> str | None:
        return self._follow.run_id

    def __aiter__(self) -> AsyncRunStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        return await self._events.__anext__()

    async def aclose(self) -> None:
        """Stop reading (closes the connection)."""
        aclose = getattr(self._events, "aclose", None)
        if aclose is not None:
            await aclose()


class ReginaClient:
    """Talks to any web process of a Regina cluster.

    `timeout`: seconds a request waits for its answer (None: no limit; connecting: at most 10 s).
    Keep it above the server's `limits.requestTimeout` so a long chat's 202 arrives first.
    Streams wait for their events without a limit."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        headers = _auth(token)
        requests, self._stream_timeout = _timeouts(timeout)
        base_url = _checked_url(base_url)
        with _errors_of(base_url):
            self._http = httpx.Client(base_url=base_url, headers=headers, timeout=requests)

    def _request(self, call: _Call) -> httpx.Response:
        with _errors_of(self._http.base_url):
            resp = self._http.request(call.method, call.path, json=call.json, params=call.params, headers=call.headers)
        _raise_for(resp)
        return resp

    def _send(self, call: _Call) -> Any:
        return _body(self._request(call))

    def _attempt(self, follow: _Follow) -> Iterator[dict[str, Any]]:
        """One connection of a stream: its new events, until the run's last one."""
        call = follow.call
        with (
            _errors_of(self._http.base_url, transport=False),
            self._http.stream(
                call.method,
                call.path,
                json=call.json,
                params=call.params,
                headers=call.headers,
                timeout=self._stream_timeout,
            ) as r,
        ):
            if r.status_code >= 400:
                r.read()
                _raise_for(r)
            follow.opened(r)
            empty = True
            for line in _lines(r.iter_bytes()):
                if follow.seen(event := _event(r, line)):
                    empty = False
                    yield event
                    if follow.ended:
                        return
        raise _CutShort(empty)

    def _follow(self, follow: _Follow) -> Iterator[dict[str, Any]]:
        """A run's events, re-attaching after a dropped connection (see `_Follow.retry`)."""
        while True:
            try:
                yield from self._attempt(follow)
                return
            except httpx.TransportError as exc:
                if (run_id := _to_look_up(exc, follow)) and self._has_ended(run_id):
                    return
                time.sleep(follow.retry(exc, self._http.base_url))

    def _has_ended(self, run_id: str) -> bool:
        """Whether the run has ended (False when that cannot be told now: re-attach)."""
        try:
            return _ended(self.run(run_id))
        except ConnectionFailed:
            return False

    def _ndjson(self, call: _Call, after: int = 0) -> RunStream:
        follow = _Follow(call, seq=after)
        return RunStream(follow, self._follow(follow))

    # -- agents and instances -------------------------------------------------------------------

    def agents(self) -> list[dict[str, Any]]:
        """Every agent definition."""
        return _agents(self._request(_Routes.agents()))

    def spawn(self, definition_id: str, idempotency_key: str | None = None) -> dict[str, Any]:
        """Start a new instance (the same key answers the same instance for 24 h)."""
        return cast(dict[str, Any], self._send(_Routes.spawn(definition_id, idempotency_key)))

    def instance(self, instance_id: str) -> dict[str, Any]:
        """The instance's status, member, epoch and usage."""
        return cast(dict[str, Any], self._send(_Routes.instance(instance_id)))

    def instances(self, definition_id: str | None = None, **filters: Any) -> list[dict[str, Any]]:
        """Every instance of one definition, or one page of the fleet (`GET /instances`) when there
        are filters (agent, status, member, limit, cursor; the definition is the agent filter);
        `fleet()` walks every page. TypeError for an unknown filter."""
        return _items(self._request(_Routes.instances(definition_id, filters)))

    def fleet(self, **filters: Any) -> Iterator[dict[str, Any]]:
        """Every instance of the fleet (`GET /instances`, page after page by `X-Next-Cursor`),
        with member and lastActive; filters: agent, status, member, limit (the page size)."""
        params = _fleet_params(filters)
        while True:
            resp = self._request(_Routes.instances(None, params))
            yield from _items(resp)
            cursor = resp.headers.get("X-Next-Cursor")
            if not cursor:
                return
            params = {**params, "cursor": cursor}

    def heartbeat(self, instance_id: str) -> None:
        """Reset the idle timer."""
        self._send(_Routes.instance(instance_id, "heartbeat", "POST"))

    def suspend(self, instance_id: str) -> dict[str, Any]:
        """Back up and release the instance: {instanceId, status} with status "suspended", or
        "suspending" (a 202) while its owner still finishes a running step (it will; the
        instance's record says when)."""
        return _suspended(instance_id, self._request(_Routes.instance(instance_id, "suspend", "POST")))

    def resume(self, instance_id: str) -> None:
        """Start a suspended instance (on any worker)."""
        self._send(_Routes.instance(instance_id, "resume", "POST"))

    def delete(self, instance_id: str) -> None:
        """Remove the instance with its files, backup and keys."""
        self._send(_Routes.instance(instance_id, method="DELETE"))

    # -- runs ------------------------------------------------------------------------------------

    def chat(
        self, instance_id: str, message: str, when_busy: WhenBusy = "queue", idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """Send a message and wait for the answer: {text, usage, runId, finishReason}. A run that
        outlives the server's request timeout (202) is followed to its end; RunFailed when it
        ends with an `error` event."""
        resp = self._request(_Routes.chat(instance_id, message, when_busy, idempotency_key, False))
        if resp.status_code != 202:
            return cast(dict[str, Any], _body(resp))
        run_id = _accepted_run(resp)
        final: dict[str, Any] = {}
        for event in self._ndjson(_Routes.events(run_id, 0)):
            final = event
        return _answer(final, run_id)

    def stream(
        self, instance_id: str, message: str, when_busy: WhenBusy = "queue", idempotency_key: str | None = None
    ) -> RunStream:
        """Send a message (when reading starts) and yield its events as they happen (each has `seq`
        and `runId`; the stream's `run_id` is set before the first event is yielded); a dropped
        connection re-attaches."""
        return self._ndjson(_Routes.chat(instance_id, message, when_busy, idempotency_key, True))

    def start(
        self, instance_id: str, message: str, when_busy: WhenBusy = "queue", idempotency_key: str | None = None
    ) -> str:
        """Start a run and let it go on unfollowed: its run id, from the answer's `X-Run-Id`
        header (the connection closes before any event). With the Idempotency-Key of an earlier
        `stream()` it names that stream's run, also when the stream was let go before its
        `run_id` was known (the key's run is started if that request never arrived)."""
        call = _Routes.chat(instance_id, message, when_busy, idempotency_key, True)
        with (
            _errors_of(self._http.base_url),
            self._http.stream(call.method, call.path, json=call.json, headers=call.headers) as r,
        ):
            if r.status_code >= 400:
                r.read()
                _raise_for(r)
            return _started_run(r)

    def events(self, run_id: str, after: int = 0) -> RunStream:
        """Re-attach to a run: its events after `after`, then the live ones until it ends (none
        when `after` is an ended run's last seq)."""
        return self._ndjson(_Routes.events(run_id, after), after)

    def run(self, run_id: str) -> dict[str, Any]:
        """The run's record: status, times, usage (finishReason, error)."""
        return cast(dict[str, Any], self._send(_Routes.run(run_id)))

    def cancel(self, run_id: str) -> dict[str, Any]:
        """Stop a run: {"cancelled": true}, or {"cancelled": false, "status"} when it had ended."""
        return cast(dict[str, Any], self._send(_Routes.run(run_id, "cancel", "POST")))

    def steer(self, instance_id: str, message: str, idempotency_key: str | None = None) -> dict[str, Any]:
        """Queue a message for the running loop's next step boundary: {queued, steerId}."""
        return cast(dict[str, Any], self._send(_Routes.steer(instance_id, message, idempotency_key)))

    def reload(self) -> dict[str, Any]:
        """Reload the agent registry in every web and worker process: {agents, errors}."""
        return _reloaded(self._request(_Routes.reload()))

    def messages(self, instance_id: str) -> list[dict[str, Any]]:
        """The conversation, oldest first."""
        return cast(list[dict[str, Any]], self._send(_Routes.instance(instance_id, "messages")))

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

    def __init__(self, base_url: str, token: str | None = None, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        headers = _auth(token)
        requests, self._stream_timeout = _timeouts(timeout)
        base_url = _checked_url(base_url)
        with _errors_of(base_url):
            self._http = httpx.AsyncClient(base_url=base_url, headers=headers, timeout=requests)

    async def _request(self, call: _Call) -> httpx.Response:
        with _errors_of(self._http.base_url):
            resp = await self._http.request(
                call.method, call.path, json=call.json, params=call.params, headers=call.headers
            )
        _raise_for(resp)
        return resp

    async def _send(self, call: _Call) -> Any:
        return _body(await self._request(call))

    async def _attempt(self, follow: _Follow) -> AsyncIterator[dict[str, Any]]:
        """One connection of a stream: its new events, until the run's last one."""
        call = follow.call
        with _errors_of(self._http.base_url, transport=False):
            async with self._http.stream(
                call.method,
                call.path,
                json=call.json,
                params=call.params,
                headers=call.headers,
                timeout=self._stream_timeout,
            ) as r:
                if r.status_code >= 400:
                    await r.aread()
                    _raise_for(r)
                follow.opened(r)
                empty = True
                async for line in _alines(r.aiter_bytes()):
                    if follow.seen(event := _event(r, line)):
                        empty = False
                        yield event
                        if follow.ended:
                            return
        raise _CutShort(empty)

    async def _follow(self, follow: _Follow) -> AsyncIterator[dict[str, Any]]:
        """A run's events, re-attaching after a dropped connection (see `_Follow.retry`)."""
        while True:
            try:
                async for event in self._attempt(follow):
                    yield event
                return
            except httpx.TransportError as exc:
                if (run_id := _to_look_up(exc, follow)) and await self._has_ended(run_id):
                    return
                await asyncio.sleep(follow.retry(exc, self._http.base_url))

    async def _has_ended(self, run_id: str) -> bool:
        """Whether the run has ended (False when that cannot be told now: re-attach)."""
        try:
            return _ended(await self.run(run_id))
        except ConnectionFailed:
            return False

    def _ndjson(self, call: _Call, after: int = 0) -> AsyncRunStream:
        follow = _Follow(call, seq=after)
        return AsyncRunStream(follow, self._follow(follow))

    # -- agents and instances -------------------------------------------------------------------

    async def agents(self) -> list[dict[str, Any]]:
        """Every agent definition."""
        return _agents(await self._request(_Routes.agents()))

    async def spawn(self, definition_id: str, idempotency_key: str | None = None) -> dict[str, Any]:
        """Start a new instance."""
        return cast(dict[str, Any], await self._send(_Routes.spawn(definition_id, idempotency_key)))

    async def instance(self, instance_id: str) -> dict[str, Any]:
        """The instance's status, member, epoch and usage."""
        return cast(dict[str, Any], await self._send(_Routes.instance(instance_id)))

    async def instances(self, definition_id: str | None = None, **filters: Any) -> list[dict[str, Any]]:
        """As `ReginaClient.instances`: a definition's instances, or one filtered page of the fleet."""
        return _items(await self._request(_Routes.instances(definition_id, filters)))

    async def fleet(self, **filters: Any) -> AsyncIterator[dict[str, Any]]:
        """Every instance of the fleet, page after page (filters as `ReginaClient.fleet`)."""
        params = _fleet_params(filters)
        while True:
            resp = await self._request(_Routes.instances(None, params))
            for item in _items(resp):
                yield item
            cursor = resp.headers.get("X-Next-Cursor")
            if not cursor:
                return
            params = {**params, "cursor": cursor}

    async def heartbeat(self, instance_id: str) -> None:
        """Reset the idle timer."""
        await self._send(_Routes.instance(instance_id, "heartbeat", "POST"))

    async def suspend(self, instance_id: str) -> dict[str, Any]:
        """As `ReginaClient.suspend`: {instanceId, status "suspended" or "suspending"}."""
        return _suspended(instance_id, await self._request(_Routes.instance(instance_id, "suspend", "POST")))

    async def resume(self, instance_id: str) -> None:
        """Start a suspended instance (on any worker)."""
        await self._send(_Routes.instance(instance_id, "resume", "POST"))

    async def delete(self, instance_id: str) -> None:
        """Remove the instance."""
        await self._send(_Routes.instance(instance_id, method="DELETE"))

    # -- runs ------------------------------------------------------------------------------------

    async def chat(
        self, instance_id: str, message: str, when_busy: WhenBusy = "queue", idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """Send a message and wait for the answer: {text, usage, runId, finishReason} (a 202 is
        followed to the run's end, as `ReginaClient.chat`)."""
        resp = await self._request(_Routes.chat(instance_id, message, when_busy, idempotency_key, False))
        if resp.status_code != 202:
            return cast(dict[str, Any], _body(resp))
        run_id = _accepted_run(resp)
        final: dict[str, Any] = {}
        async for event in self._ndjson(_Routes.events(run_id, 0)):
            final = event
        return _answer(final, run_id)

    def stream(
        self, instance_id: str, message: str, when_busy: WhenBusy = "queue", idempotency_key: str | None = None
    ) -> AsyncRunStream:
        """Send a message and yield its events as they happen; a dropped connection re-attaches."""
        return self._ndjson(_Routes.chat(instance_id, message, when_busy, idempotency_key, True))

    async def start(
        self, instance_id: str, message: str, when_busy: WhenBusy = "queue", idempotency_key: str | None = None
    ) -> str:
        """As `ReginaClient.start`: the run id of a run started (or found by its key) unfollowed."""
        call = _Routes.chat(instance_id, message, when_busy, idempotency_key, True)
        with _errors_of(self._http.base_url):
            async with self._http.stream(call.method, call.path, json=call.json, headers=call.headers) as r:
                if r.status_code >= 400:
                    await r.aread()
                    _raise_for(r)
                return _started_run(r)

    def events(self, run_id: str, after: int = 0) -> AsyncRunStream:
        """Re-attach to a run's events."""
        return self._ndjson(_Routes.events(run_id, after), after)

    async def run(self, run_id: str) -> dict[str, Any]:
        """The run's record."""
        return cast(dict[str, Any], await self._send(_Routes.run(run_id)))

    async def cancel(self, run_id: str) -> dict[str, Any]:
        """Stop a run."""
        return cast(dict[str, Any], await self._send(_Routes.run(run_id, "cancel", "POST")))

    async def steer(self, instance_id: str, message: str, idempotency_key: str | None = None) -> dict[str, Any]:
        """Queue a steering message: {queued, steerId}."""
        return cast(dict[str, Any], await self._send(_Routes.steer(instance_id, message, idempotency_key)))

    async def reload(self) -> dict[str, Any]:
        """Reload the agent registry in every web and worker process: {agents, errors}."""
        return _reloaded(await self._request(_Routes.reload()))

    async def messages(self, instance_id: str) -> list[dict[str, Any]]:
        """The conversation, oldest first."""
        return cast(list[dict[str, Any]], await self._send(_Routes.instance(instance_id, "messages")))

    # -- lifetime ----------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the HTTP connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncReginaClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
