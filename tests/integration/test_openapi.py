"""OpenAPI (SPEC §12): schemathesis against `/openapi.json` of the live shared cluster.

A bounded, seeded number of generated requests per operation; every answer must be no 5xx and
match the documented schema for its status code.
"""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.harness.processes import Cluster


@pytest.fixture(scope="module")
def live_schema(cluster: Cluster) -> schemathesis.BaseSchema:
    web = next(p for p in cluster.procs if p.name.startswith("web"))
    return schemathesis.openapi.from_url(web.url + "/openapi.json")


schema = schemathesis.pytest.from_fixture("live_schema")


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
