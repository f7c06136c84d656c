"""OpenAPI (SPEC §12): `/openapi.json` describes the real answers of the live shared cluster.

Real requests (spawn, chat, stream, events, cancel, a whenBusy reject, the fleet's pages, suspend,
readiness, a bearer token's 401, a sync chat's 202) are checked against the document: the status
is declared for the operation, every header of Regina's own that the server sent is declared, and
the body validates (jsonschema) against the declared schema of its media type. Every Flask route
is in `paths`. Then schemathesis: a bounded, seeded number of generated requests per operation;
every answer must be no 5xx and match the documented schema for its status code.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import jsonschema
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate as validate_openapi
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from api import create_app
from api.services import Services
from regina.config import Settings
from regina.lifecycle import Coordinator
from regina.redis_conn import connect
from regina.registry import AgentRegistry
from regina.registry_sync import RegistryFollower
from tests.harness.fake_llm import FakeLLM, Reply
from tests.harness.processes import Cluster
from tests.harness.waiting import wait_until
from tests.integration.test_runs import Stream
from workers.celery_app import app as celery_app
from workers.dispatcher import CeleryDispatcher

AGENTS = str(Path(__file__).resolve().parents[1] / "agents")

#: The response headers that are Regina's own (not HTTP's or the server's): each one sent must be
#: declared on the answer that sent it.
OWN_HEADERS = ("X-Run-Id", "Location", "Retry-After", "X-Next-Cursor", "Link")


@pytest.fixture(scope="module")
def live_schema(cluster: Cluster) -> schemathesis.BaseSchema:
    web = next(p for p in cluster.procs if p.name.startswith("web"))
    return schemathesis.openapi.from_url(web.url + "/openapi.json")


schema = schemathesis.pytest.from_fixture("live_schema")


class Conformance:
    """Checks real answers against one served document; collects every mismatch."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        resource = Resource.from_contents(doc, default_specification=DRAFT202012)
        self.registry: Registry[Any] = Registry().with_resource("urn:doc", resource)
        self.problems: list[str] = []
        self.seen: set[tuple[str, str, int]] = set()

    def _validator(self, *pointer: str) -> jsonschema.Draft202012Validator:
        where = "/".join(quote(part.replace("~", "~0").replace("/", "~1"), safe="") for part in pointer)
        return jsonschema.Draft202012Validator({"$ref": f"urn:doc#/{where}"}, registry=self.registry)

    def expect(self, holds: bool, problem: str) -> None:
        """A mismatch found by a targeted check."""
        if not holds:
            self.problems.append(problem)

    def operation(self, path: str, method: str) -> dict[str, Any] | None:
        operation: dict[str, Any] | None = self.doc["paths"].get(path, {}).get(method)
        return operation

    def security(self, path: str, method: str) -> list[Any]:
        """The operation's security requirements (its own, else the document's)."""
        operation = self.operation(path, method) or {}
        return list(operation.get("security", self.doc.get("security", [])))

    def accepts_body(self, path: str, method: str, body: Any) -> bool:
        """Whether the document's request body schema of the operation accepts `body`."""
        return self._validator("paths", path, method, "requestBody", "content", "application/json", "schema").is_valid(
            body
        )

    def accepts_param(self, path: str, method: str, name: str, value: Any) -> bool:
        operation = self.operation(path, method) or {}
        for i, param in enumerate(operation.get("parameters", [])):
            if param["name"] == name:
                return self._validator("paths", path, method, "parameters", str(i), "schema").is_valid(value)
        raise AssertionError(f"{method.upper()} {path}: no parameter {name!r}")

    def check(self, path: str, method: str, resp: httpx.Response, sent: Any = None) -> httpx.Response:
        """Check one answer (and the JSON body `sent`, if any); returns `resp`."""
        where = f"{method.upper()} {path} -> {resp.status_code}"
        self.seen.add((path, method, resp.status_code))
        operation = self.operation(path, method)
        if operation is None:
            self.problems.append(f"{where}: the operation is not in paths")
            return resp
        self._check_request(where, path, method, operation, resp, sent)
        answer = operation["responses"].get(str(resp.status_code))
        if answer is None:
            self.problems.append(f"{where}: status not declared (declared: {sorted(operation['responses'])})")
            return resp
        declared = {name.lower() for name in answer.get("headers", {})}
        for name in OWN_HEADERS:
            if name in resp.headers and name.lower() not in declared:
                self.problems.append(f"{where}: response header {name} not declared")
        if not resp.content:
            return resp
        media = resp.headers.get("content-type", "").split(";")[0].strip()
        content = answer.get("content") or {}
        if media not in content or "schema" not in content[media]:
            self.problems.append(f"{where}: answered {media!r}, declared content {sorted(content)}")
            return resp
        body: Any
        if media == "application/json":
            body = resp.json()
        elif media == "application/x-ndjson":
            body = [json.loads(line) for line in resp.text.splitlines() if line]
        else:
            body = resp.text
        validator = self._validator(
            "paths", path, method, "responses", str(resp.status_code), "content", media, "schema"
        )
        for error in list(validator.iter_errors(body))[:3]:
            self.problems.append(f"{where}: body does not match its schema: {error.message[:300]}")
        schema = content[media]["schema"]
        for field in sorted(set(self._undeclared(schema, body, "body"))):
            self.problems.append(f"{where}: {field} is sent but not in the schema")
        return resp

    def _resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        """`schema`, or what its `$ref` (a `#/components/schemas/…`) names."""
        while "$ref" in schema:
            schema = self.doc["components"]["schemas"][schema["$ref"].removeprefix("#/components/schemas/")]
        return schema

    def _undeclared(self, schema: dict[str, Any], value: Any, where: str) -> Iterator[str]:
        """The object keys in `value` that `schema` does not name (where it does not allow any key
        with `additionalProperties`): a field the server sends that the document leaves out."""
        schema = self._resolve(schema)
        branches = [self._resolve(b) for b in schema.get("oneOf", schema.get("anyOf", []))]
        if isinstance(value, dict):
            objects = [b for b in branches if b.get("type") == "object"]
            tagged = [b for b in objects if b.get("properties", {}).get("type", {}).get("const") == value.get("type")]
            chosen = tagged or (objects if len(objects) == 1 else [])
            properties = dict(schema.get("properties", {}))
            for branch in chosen[:1]:
                properties |= branch.get("properties", {})
            if "additionalProperties" in schema or any("additionalProperties" in b for b in chosen[:1]):
                return
            if not properties:
                return
            for key, item in value.items():
                if key not in properties:
                    yield f"{where}.{key}"
                else:
                    yield from self._undeclared(properties[key], item, f"{where}.{key}")
        elif isinstance(value, list):
            items = schema.get("items") or next((b["items"] for b in branches if "items" in b), None)
            if items is not None:
                for item in value:
                    yield from self._undeclared(items, item, f"{where}[]")

    def _check_request(
        self, where: str, path: str, method: str, operation: dict[str, Any], resp: httpx.Response, sent: Any
    ) -> None:
        declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "query"}
        for name in resp.request.url.params:
            if name not in declared:
                self.problems.append(f"{where}: query parameter {name!r} not declared")
        body = operation.get("requestBody")
        if sent is not None and body is None:
            self.problems.append(f"{where}: sent a JSON body; no requestBody declared")
        if sent is None and body is not None and body.get("required") and resp.status_code < 400:
            self.problems.append(f"{where}: requestBody declared required; the server took a request without one")


@pytest.fixture
def conformance(api: httpx.Client) -> Conformance:
    """The shared cluster's document (a valid OpenAPI 3.1 one), to check answers against."""
    doc = api.get("/openapi.json").json()
    validate_openapi(doc)
    return Conformance(doc)


def _rules(redis_url: str) -> list[tuple[str, str]]:
    """(path as the document writes it, method) of every route of the web app (built here, over
    the cluster's Redis, with the code the cluster's web runs)."""
    settings = Settings(redis=redis_url, agents_dir=AGENTS)
    registry = AgentRegistry(settings)
    registry.load()
    client = connect(settings.redis)
    try:
        coordinator = Coordinator(settings, registry, client, CeleryDispatcher(celery_app, client), None)
        services = Services(settings, registry, client, coordinator, RegistryFollower(client, registry))
        app = create_app(settings, services)
        routes = []
        for rule in app.url_map.iter_rules():
            path = re.sub(r"<(?:[^>:]+:)?([^>]+)>", r"{\1}", rule.rule)
            for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
                routes.append((path, method.lower()))
        return routes
    finally:
        client.close()


def test_every_route_is_in_the_document(api: httpx.Client, cluster: Cluster, conformance: Conformance) -> None:
    missing = [f"{m.upper()} {p}" for p, m in _rules(cluster.redis_url) if conformance.operation(p, m) is None]
    assert missing == [], missing


def test_real_answers_match_the_document(api: httpx.Client, fake_llm: FakeLLM, conformance: Conformance) -> None:
    c = conformance.check
    for path in ("/openapi.json", "/docs", "/", "/healthz", "/metrics", "/agents", "/admin/agents/errors"):
        c(path, "get", api.get(path))
    c("/healthz", "get", api.get("/healthz", params={"ready": "true"}))
    c("/agents/{def_id}", "get", api.get("/agents/openai-agent"))

    # Spawn, with and without its optional body.
    spawned = c("/agents/{def_id}/instances", "post", api.post("/agents/openai-agent/instances"))
    iid = spawned.json()["instanceId"]
    body = {"note": "ignored"}
    resp = api.post("/agents/openai-agent/instances", json=body, headers={"Idempotency-Key": f"oas-{iid}"})
    other = c("/agents/{def_id}/instances", "post", resp, sent=body).json()["instanceId"]
    c("/agents/{def_id}/instances", "get", api.get("/agents/openai-agent/instances"))
    c("/instances/{iid}", "get", api.get(f"/instances/{iid}"))
    c("/instances/{iid}/heartbeat", "post", api.post(f"/instances/{iid}/heartbeat"))

    # The fleet, a page at a time: X-Next-Cursor and Link.
    first = c("/instances", "get", api.get("/instances", params={"limit": 1}))
    assert "X-Next-Cursor" in first.headers and "Link" in first.headers, first.headers
    cursor = first.headers["X-Next-Cursor"]
    c("/instances", "get", api.get("/instances", params={"limit": 1, "cursor": cursor}))

    # A sync chat, a stream, the run, its events, a cancel of the ended run.
    body = {"message": "hi"}
    chat = c("/instances/{iid}/chat", "post", api.post(f"/instances/{iid}/chat", json=body), sent=body)
    run_id = chat.headers["X-Run-Id"]
    streamed = api.post(f"/instances/{iid}/chat/stream", json=body)
    assert streamed.status_code == 200 and streamed.text.strip(), streamed.text
    c("/instances/{iid}/chat/stream", "post", streamed, sent=body)
    c("/runs/{run_id}", "get", api.get(f"/runs/{run_id}"))
    c("/runs/{run_id}/events", "get", api.get(f"/runs/{run_id}/events", params={"after": 0}))
    c("/runs/{run_id}/cancel", "post", api.post(f"/runs/{run_id}/cancel"))
    c("/instances/{iid}/messages", "get", api.get(f"/instances/{iid}/messages"))

    # While a run goes on: whenBusy reject (409 naming it), steer, cancel (202).
    fake_llm.push_for("oas busy", Reply(text="long answer", delay=3))
    running = Stream(api, iid, "oas busy")
    busy_run = running.id()
    wait_until(lambda: any(r.last_user_text == "oas busy" for r in fake_llm.requests), 20)
    for path in ("/instances/{iid}/chat", "/instances/{iid}/chat/stream"):
        body = {"message": "no", "whenBusy": "reject"}
        rejected = c(path, "post", api.post(path.replace("{iid}", iid), json=body), sent=body)
        assert rejected.status_code == 409 and rejected.json()["runId"] == busy_run, rejected.text
    body = {"message": "also this"}
    c("/instances/{iid}/steer", "post", api.post(f"/instances/{iid}/steer", json=body), sent=body)
    c("/runs/{run_id}/cancel", "post", api.post(f"/runs/{busy_run}/cancel"))
    running.until("finish", timeout=30)
    c("/runs/{run_id}/events", "get", api.get(f"/runs/{busy_run}/events"))

    # What the server refuses, the document refuses too.
    blank = {"message": " \t\n"}
    assert (
        c("/instances/{iid}/chat", "post", api.post(f"/instances/{iid}/chat", json=blank), sent=blank).status_code
        == 400
    )
    expect = conformance.expect
    expect(not conformance.accepts_body("/instances/{iid}/chat", "post", blank), "chat: a blank message validates")
    expect(not conformance.accepts_body("/instances/{iid}/steer", "post", blank), "steer: a blank message validates")
    expect(conformance.accepts_body("/instances/{iid}/chat", "post", {"message": " x "}), "chat: ' x ' refused")
    huge = 10**18
    refused = api.get(f"/runs/{busy_run}/events", params={"after": huge})
    assert c("/runs/{run_id}/events", "get", refused).status_code == 400
    after_ok = conformance.accepts_param("/runs/{run_id}/events", "get", "after", huge - 1)
    expect(not conformance.accepts_param("/runs/{run_id}/events", "get", "after", huge), "events: after=10**18 valid")
    expect(after_ok, "events: after=10**18-1 (taken) refused")

    # Suspend, resume, delete.
    c("/instances/{iid}/suspend", "post", api.post(f"/instances/{iid}/suspend"))
    c("/instances/{iid}/resume", "post", api.post(f"/instances/{iid}/resume"))
    for each in (iid, other):
        c("/instances/{iid}", "delete", api.delete(f"/instances/{each}"))
    c("/instances/{iid}", "get", api.get(f"/instances/{iid}"))

    # Without a token configured, nothing asks for one.
    assert all(not conformance.security(p, m) for p, m, _ in conformance.seen)
    assert conformance.problems == [], "\n".join(conformance.problems)


def test_with_a_token_every_route_but_healthz_asks_for_it_and_slow_answers_are_documented(
    make_cluster: Callable[..., Cluster], fake_llm: FakeLLM
) -> None:
    """A bearer token: its 401s and security requirements; a sync chat outliving the request
    timeout (202 with Location, Retry-After, X-Run-Id) and a suspend outliving the worker's reply
    timeout (202 `suspending`)."""
    token = "oas-s3cret"
    cluster = make_cluster(
        REGINA_AUTH_TOKEN=token,
        REGINA_LIMITS__REQUEST_TIMEOUT="1",
        REGINA_LIMITS__WORKER_REPLY_TIMEOUT="1",
        REGINA_LIMITS__PLACEMENT_WAIT="2",
    ).start()
    auth = {"Authorization": f"Bearer {token}"}
    with (
        httpx.Client(base_url=cluster.web.url, timeout=60) as anonymous,
        httpx.Client(base_url=cluster.web.url, timeout=60, headers=auth) as api,
        cf.ThreadPoolExecutor(1) as pool,
    ):
        doc = api.get("/openapi.json").json()
        validate_openapi(doc)
        conformance = Conformance(doc)
        c = conformance.check
        assert doc["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
        expect = conformance.expect
        for path in ("/agents", "/openapi.json", "/instances"):
            refused = c(path, "get", anonymous.get(path))
            assert refused.status_code == 401
            expect(conformance.security(path, "get") == [{"bearer": []}], f"{path}: no bearer security requirement")
        assert c("/healthz", "get", anonymous.get("/healthz")).status_code == 200
        expect(conformance.security("/healthz", "get") == [], "/healthz: asks for a token it does not need")
        expect("401" not in doc["paths"]["/healthz"]["get"]["responses"], "/healthz: declares 401")

        iid = c("/agents/{def_id}/instances", "post", api.post("/agents/openai-agent/instances")).json()["instanceId"]
        fake_llm.push_for("oas slow", Reply(text="worth the wait", delay=4))
        body = {"message": "oas slow"}
        chat = pool.submit(api.post, f"/instances/{iid}/chat", json=body)
        accepted = c("/instances/{iid}/chat", "post", chat.result(), sent=body)
        assert accepted.status_code == 202, accepted.text
        assert all(name in accepted.headers for name in ("Location", "Retry-After", "X-Run-Id")), accepted.headers
        # The suspend waits for the running step (4 s): longer than the 1 s reply timeout.
        suspending = c("/instances/{iid}/suspend", "post", api.post(f"/instances/{iid}/suspend"))
        assert suspending.status_code == 202, suspending.text
        c("/runs/{run_id}/events", "get", api.get(accepted.json()["events"]))
        wait_until(lambda: api.get(f"/instances/{iid}").json()["status"] == "suspended", 20)
    assert conformance.problems == [], "\n".join(conformance.problems)


def test_document_index_and_docs_page(api: httpx.Client) -> None:
    doc = api.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    for path in ("/instances/{iid}/chat", "/runs/{run_id}/cancel", "/instances", "/agents/{def_id}/instances"):
        assert path in doc["paths"], sorted(doc["paths"])
    chat = doc["paths"]["/instances/{iid}/chat"]["post"]
    assert "requestBody" in chat and {"200", "400", "404", "409", "422"} <= set(chat["responses"])
    index = api.get("/").json()
    assert index["docs"] == "/docs" and index["health"] == "/healthz" and index["metrics"] == "/metrics"
    page = api.get("/docs")
    assert page.status_code == 200 and "/openapi.json" in page.text


@schema.parametrize()
@settings(max_examples=8, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@pytest.mark.slow
def test_every_operation_answers_as_documented(case: schemathesis.Case) -> None:
    case.call_and_validate(checks=[not_a_server_error, response_schema_conformance], timeout=60)
