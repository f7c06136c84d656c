"""`/openapi.json` documents the error answers the server sends (429 with Retry-After, 500)."""

from __future__ import annotations

import httpx


def test_the_document_has_429_with_retry_after_where_the_server_sends_it_and_500_everywhere(
    api: httpx.Client,
) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    for path in ("/instances/{iid}/chat", "/instances/{iid}/chat/stream", "/instances/{iid}/steer"):
        answer = paths[path]["post"]["responses"]["429"]
        assert answer["headers"]["Retry-After"]["schema"]["type"] == "integer", answer
        assert answer["content"]["application/json"]["schema"]["$ref"].startswith("#/components/schemas/Error"), answer
    assert "429" not in paths["/instances/{iid}"]["get"]["responses"]
    for path, operations in paths.items():
        for method, operation in operations.items():
            assert "500" in operation["responses"], (method, path)
