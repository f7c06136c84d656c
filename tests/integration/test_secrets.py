"""Secrets (API keys, tokens, header values) never reach a response, an event, the model or a log.

A scripted run on its own cluster: secrets in the environment, a definition that puts one in its
description and greeting, a provider error that echoes the key, tools that go looking for them.
Every response body, every event, every model request and every process log is grepped for them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx

from tests.harness.fake_llm import FakeLLM, Reply, ToolCall
from tests.harness.processes import Cluster

ROOT = Path(__file__).resolve().parents[1]
SECRETS = {
    "OPENAI_API_KEY": "sk-test-openai-9f8e7d6c5b4a",
    "BILLING_SERVICE_TOKEN": "tok-billing-1a2b3c4d5e6f",
    "DB_PASSWORD": "hunter2-correct-horse-battery",
}
LEAKY = """---
name: leaky-agent
description: "Calls billing with ${BILLING_SERVICE_TOKEN}"
model: gpt-4o
greeting: "Your key is ${OPENAI_API_KEY}"
---
You are a test agent.
"""


def test_no_secret_reaches_a_response_an_event_the_model_or_a_log(
    make_cluster: object, fake_llm: FakeLLM, tmp_path: Path
) -> None:
    agents = tmp_path / "agents"
    agents.mkdir()
    shutil.copy(ROOT / "agents" / "openai-agent.md", agents / "openai-agent.md")
    (agents / "leaky-agent.md").write_text(LEAKY)
    c: Cluster = make_cluster(  # type: ignore[operator]
        REGINA_AGENTS_DIR=str(agents),
        REGINA_ALLOWED_ENV="[PATH, LANG, BILLING_SERVICE_TOKEN, DB_PASSWORD, OPENAI_API_KEY]",
        REGINA_AUTH_TOKEN="bearer-secret-0000-1111",
        REGINA_LOG_LEVEL="DEBUG",
        **SECRETS,
    )
    c.start_worker()
    web = c.start_web()
    bodies: list[str] = []
    headers = {"Authorization": "Bearer bearer-secret-0000-1111"}
    with httpx.Client(base_url=web.url, timeout=60, headers=headers) as api:

        def call(method: str, path: str, **kw: object) -> httpx.Response:
            resp = api.request(method, path, **kw)  # type: ignore[arg-type]
            bodies.append(f"{method} {path} → {resp.status_code} {dict(resp.headers)} {resp.text}")
            return resp

        call("GET", "/agents")
        call("GET", "/agents/leaky-agent")
        iid = call("POST", "/agents/leaky-agent/instances").json()["instanceId"]
        fake_llm.push(Reply(error_status=401, error_message=f"Incorrect API key provided: {SECRETS['OPENAI_API_KEY']}"))
        call("POST", f"/instances/{iid}/chat", json={"message": "first"})
        fake_llm.push(
            Reply(error_status=500, error_message=f"upstream said {SECRETS['BILLING_SERVICE_TOKEN']}", chunk_delay=0)
        )
        call("POST", f"/instances/{iid}/chat/stream", json={"message": "stream it"})
        fake_llm.push(
            Reply(
                tool_calls=[
                    ToolCall("bash", {"command": "env; echo $DB_PASSWORD $OPENAI_API_KEY $BILLING_SERVICE_TOKEN"}),
                    ToolCall("read_file", {"path": "/proc/self/environ"}),
                ]
            ),
            Reply(text="looked around"),
        )
        call("POST", f"/instances/{iid}/chat", json={"message": "find the keys"})
        call("GET", f"/instances/{iid}/messages")
        call("GET", "/metrics")
        call("GET", "/admin/agents/errors")
    c.stop()

    model_saw = [json.dumps(r.messages) for r in fake_llm.requests]
    logs = [p.log() for p in c.procs]
    for name, value in {**SECRETS, "REGINA_AUTH_TOKEN": "bearer-secret-0000-1111"}.items():
        for where, texts in (("a response", bodies), ("the model", model_saw), ("a log", logs)):
            for text in texts:
                if name == "REGINA_AUTH_TOKEN" and where == "a response":
                    continue  # the client sent it; httpx echoes the request headers nowhere, responses hold none
                assert value not in text, f"{name} reached {where}: …{text[max(0, text.find(value) - 200) :][:400]}"
    assert any("[redacted]" in b for b in bodies), "the leaky description should show a redaction"


BROKEN = {
    "url-agent.md": "mcpServers:\n  - name: s\n    transport: http\n"
    '    url: "https://mcp.example.com/x?api_key=${SVC_API_KEY} "\n',
    "budget-agent.md": "budget:\n  maxTokensPerRun: ${SVC_API_KEY}\n",
    "provider-agent.md": "provider: ${SVC_API_KEY}!\n",
    # a variable not named like a secret: only quoting the value as written keeps it out
    "plain-agent.md": "temperature: ${SVC_TUNING}\n",
}


def test_a_definition_error_quotes_the_value_as_written_never_its_expanded_secret(
    make_cluster: object, tmp_path: Path
) -> None:
    agents = tmp_path / "agents"
    agents.mkdir()
    for file, extra in BROKEN.items():
        (agents / file).write_text(f"---\nname: {file[:-3]}\nmodel: gpt-4o\n{extra}---\nhi\n")
    values = {"SVC_API_KEY": "svc-secret-value-4242", "SVC_TUNING": "private-tuning-value-77"}
    c: Cluster = make_cluster(REGINA_AGENTS_DIR=str(agents), **values)  # type: ignore[operator]
    web = c.start_web()
    with httpx.Client(base_url=web.url, timeout=30) as api:
        listed = api.get("/admin/agents/errors")
        reloaded = api.post("/admin/agents/reload")
    assert listed.status_code == 200 and reloaded.status_code == 200, (listed.text, reloaded.text)
    errors = {e["file"].rsplit("/", 1)[-1]: e["error"] for e in listed.json()}
    assert sorted(errors) == sorted(BROKEN)
    assert reloaded.json()["errors"] == listed.json()
    assert "'https://mcp.example.com/x?api_key=${SVC_API_KEY} '" in errors["url-agent.md"]
    assert "'${SVC_API_KEY}'" in errors["budget-agent.md"] and "'${SVC_TUNING}'" in errors["plain-agent.md"]
    for text in (listed.text, reloaded.text, web.log()):
        for name, value in values.items():
            assert value not in text, f"{name} shown: …{text[max(0, text.find(value) - 200) :][:400]}"
