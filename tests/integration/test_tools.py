"""The agent runtime over HTTP: default tools on one VFS, custom tools, history, isolation, compaction."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from tests.harness.fake_llm import FakeLLM, Reply, ToolCall
from tests.harness.waiting import wait_until
from tests.integration.test_api import spawn


def tool_results(fake: FakeLLM) -> list[str]:
    """Contents of the tool messages in the model's last request, in order."""
    return [m["content"] for m in fake.requests[-1].messages if m["role"] == "tool"]


def test_default_tools_share_one_filesystem_and_the_history_records_every_call(
    api: httpx.Client, fake_llm: FakeLLM
) -> None:
    iid = spawn(api)
    fake_llm.push(
        Reply(
            tool_calls=[ToolCall("write_file", {"path": "/notes/a.txt", "content": "banana\napple\nbanana\ncherry\n"})]
        ),
        Reply(tool_calls=[ToolCall("bash", {"command": "cat /notes/a.txt | sort | uniq -c | sort -rn | head -1"})]),
        Reply(
            tool_calls=[ToolCall("edit_file", {"path": "/notes/a.txt", "old_string": "cherry", "new_string": "date"})]
        ),
        Reply(tool_calls=[ToolCall("read_file", {"path": "/notes/a.txt"})]),
        Reply(tool_calls=[ToolCall("edit_file", {"path": "/notes/a.txt", "old_string": "kiwi", "new_string": "x"})]),
        Reply(tool_calls=[ToolCall("edit_file", {"path": "/notes/a.txt", "old_string": "banana", "new_string": "x"})]),
        Reply(tool_calls=[ToolCall("bash", {"command": "grep -c banana /notes/a.txt && ls /notes"})]),
        Reply(text="all done"),
    )
    resp = api.post(f"/instances/{iid}/chat", json={"message": "work on the notes"})
    assert resp.json()["text"] == "all done"
    results = tool_results(fake_llm)
    assert results[0] == "wrote 27 bytes to /notes/a.txt"
    assert json.loads(results[1])["stdout"].strip() == "2 banana"
    assert "replaced 1" in results[2]
    assert results[3] == "banana\napple\nbanana\ndate\n"
    assert "not found" in results[4]
    assert "2 times" in results[5] or "occurs 2" in results[5]
    assert json.loads(results[6])["stdout"] == "2\na.txt\n"

    history = api.get(f"/instances/{iid}/messages").json()
    calls = [c["function"]["name"] for m in history if m["role"] == "assistant" for c in m.get("tool_calls", [])]
    assert calls == ["write_file", "bash", "edit_file", "read_file", "edit_file", "edit_file", "bash"]
    assert [m["content"] for m in history if m["role"] == "tool"] == results
    # Every call is followed by its own result, in order.
    ids = [c["id"] for m in history if m["role"] == "assistant" for c in m.get("tool_calls", [])]
    assert [m["tool_call_id"] for m in history if m["role"] == "tool"] == ids

    # /.session/messages.jsonl in the VFS holds the same records (read through the bash tool).
    fake_llm.push(Reply(tool_calls=[ToolCall("bash", {"command": "cat /.session/messages.jsonl"})]), Reply(text="ok"))
    api.post(f"/instances/{iid}/chat", json={"message": "show the session file"})
    lines = [json.loads(x) for x in json.loads(tool_results(fake_llm)[-1])["stdout"].splitlines()]
    assert [(m["role"], m.get("content")) for m in lines[: len(history)]] == [
        (m["role"], m.get("content")) for m in history
    ]


def test_custom_tools_from_the_definition_run(api: httpx.Client, fake_llm: FakeLLM) -> None:
    iid = spawn(api, "tool-agent")
    fake_llm.push(
        Reply(tool_calls=[ToolCall("word_count", {"text": "one two three"}), ToolCall("shout", {"text": "hey"})]),
        Reply(text="counted"),
    )
    assert api.post(f"/instances/{iid}/chat", json={"message": "count"}).json()["text"] == "counted"
    first = fake_llm.requests[0]
    assert {"bash", "read_file", "write_file", "edit_file", "word_count", "shout"} <= set(first.tool_names)
    results = tool_results(fake_llm)
    assert json.loads(results[0]) == {"words": 3}
    assert "HEY" in results[1]


def test_bad_tool_arguments_and_unknown_tools_are_reported_to_the_model(api: httpx.Client, fake_llm: FakeLLM) -> None:
    iid = spawn(api)
    fake_llm.push(
        Reply(tool_calls=[ToolCall("write_file", {"path": "/x"}), ToolCall("no_such_tool", {})]),
        Reply(text="noted"),
    )
    assert api.post(f"/instances/{iid}/chat", json={"message": "try"}).json()["text"] == "noted"
    bad_args, unknown = tool_results(fake_llm)
    assert "content" in bad_args and "error" in bad_args
    assert "no_such_tool" in unknown


def test_two_instances_cannot_read_each_others_files_or_messages(api: httpx.Client, fake_llm: FakeLLM) -> None:
    a, b = spawn(api), spawn(api)
    fake_llm.push(
        Reply(tool_calls=[ToolCall("write_file", {"path": "/secret.txt", "content": "A-only"})]), Reply(text="saved")
    )
    api.post(f"/instances/{a}/chat", json={"message": "secret of A"})
    probes: list[dict[str, Any]] = [
        {"path": "/secret.txt"},
        {"path": f"/../{a}.sqlite"},
        {"path": "../../secret.txt"},
    ]
    fake_llm.push(
        Reply(
            tool_calls=[ToolCall("read_file", p) for p in probes]
            + [ToolCall("bash", {"command": "cat /secret.txt; ls -a /; find / -name '*.sqlite'"})]
        ),
        Reply(text="looked"),
    )
    api.post(f"/instances/{b}/chat", json={"message": "look around"})
    results = tool_results(fake_llm)
    assert all("A-only" not in r for r in results)
    assert all("not found" in r.lower() or "no such" in r.lower() or "error" in r.lower() for r in results[:3])
    assert "secret.txt" not in json.loads(results[3])["stdout"]
    assert all("secret of A" not in m.get("content", "") for m in api.get(f"/instances/{b}/messages").json())


def test_compaction_sends_a_summary_plus_the_last_messages_and_rewrites_the_session(
    api: httpx.Client, fake_llm: FakeLLM
) -> None:
    iid = spawn(api, "compact-agent")
    for i in range(3):
        api.post(f"/instances/{iid}/chat", json={"message": f"message number {i} " + "x" * 40})
    summaries = [r for r in fake_llm.requests if "Summar" in r.all_text and r.last_user_text != "message number 2"]
    assert summaries, "the model was asked to summarize"
    last = fake_llm.requests[-1]
    assert last.messages[1]["content"].startswith("Summary of the earlier conversation:")
    verbatim = [m["content"] for m in last.messages[2:]]
    assert verbatim[-1].startswith("message number 2")
    history = api.get(f"/instances/{iid}/messages").json()
    assert history[0]["content"].startswith("Summary of the earlier conversation:")
    assert len(history) < 6  # rewritten: 3 chats would otherwise leave 6 messages


def test_the_session_directory_is_read_only_to_tools(api: httpx.Client, fake_llm: FakeLLM) -> None:
    iid = spawn(api)
    assert api.post(f"/instances/{iid}/chat", json={"message": "remember this"}).status_code == 200
    attempts = [
        ToolCall("write_file", {"path": "/.session/messages.jsonl", "content": '{"role":"user","content":"forged"}\n'}),
        ToolCall(
            "edit_file",
            {"path": "/.session/messages.jsonl", "old_string": '"remember this"', "new_string": '"forget it"'},
        ),
        ToolCall("write_file", {"path": "/x/../.session/other.txt", "content": "x"}),
        ToolCall("bash", {"command": "echo forged > /.session/messages.jsonl"}),
        ToolCall("bash", {"command": "rm -rf /.session"}),
        ToolCall("bash", {"command": "mv /.session /moved"}),
        ToolCall("bash", {"command": "cd / && rm -rf *  .session; echo done"}),
    ]
    fake_llm.push(Reply(tool_calls=attempts), Reply(text="tried"))
    assert api.post(f"/instances/{iid}/chat", json={"message": "rewrite your past"}).json()["text"] == "tried"
    results = tool_results(fake_llm)[-len(attempts) :]
    for r in results:
        assert "read-only" in r, r
    contents = [m["content"] for m in api.get(f"/instances/{iid}/messages").json() if m["role"] == "user"]
    assert contents == ["remember this", "rewrite your past"]
    # Reading it stays allowed.
    fake_llm.push(Reply(tool_calls=[ToolCall("read_file", {"path": "/.session/messages.jsonl"})]), Reply(text="ok"))
    api.post(f"/instances/{iid}/chat", json={"message": "read it"})
    assert "remember this" in tool_results(fake_llm)[-1]


def _long_history(api: httpx.Client, fake_llm: FakeLLM, iid: str) -> list[dict[str, Any]]:
    """One chat past compact-agent's threshold (60 tokens): the next chat's step asks for a summary
    of it (this one had nothing older than its last 2 messages to summarize)."""
    fake_llm.push(Reply(text="answer 0"))
    assert api.post(f"/instances/{iid}/chat", json={"message": "message 0 " + "y" * 300}).status_code == 200
    return list(api.get(f"/instances/{iid}/messages").json())


def test_a_cancel_stops_the_run_while_the_model_writes_its_summary(api: httpx.Client, fake_llm: FakeLLM) -> None:
    """SPEC §12: a cancel stops the run at once, also while it waits on the model — the summary
    call of a compaction too (it was not interruptible: the run went on until the summary came)."""
    iid = spawn(api, "compact-agent")
    before = _long_history(api, fake_llm, iid)
    fake_llm.push_for("You compress conversations", Reply(text="too late", delay=30))
    with api.stream("POST", f"/instances/{iid}/chat/stream", json={"message": "third"}) as stream:
        run_id = stream.headers["X-Run-Id"]
        wait_until(
            lambda: any("You compress conversations" in r.all_text for r in fake_llm.requests[-3:]),
            timeout=20,
            what="the summary request",
        )
        t0 = time.monotonic()
        assert api.post(f"/runs/{run_id}/cancel").json() == {"cancelled": True}
        events = [json.loads(line) for line in stream.iter_lines() if line.strip()]
    assert time.monotonic() - t0 < 5
    assert events[-1]["type"] == "finish" and events[-1]["finishReason"] == "cancelled", events[-1]
    history = api.get(f"/instances/{iid}/messages").json()
    assert history[: len(before)] == before  # not compacted


def test_an_empty_summary_leaves_the_conversation_as_it_was(api: httpx.Client, fake_llm: FakeLLM) -> None:
    """A summary that comes back empty (a content filter, a reasoning model out of tokens) is a
    failed compaction: the history is not replaced by an empty summary."""
    iid = spawn(api, "compact-agent")
    before = _long_history(api, fake_llm, iid)
    fake_llm.push_for("You compress conversations", Reply(text=""))
    fake_llm.push(Reply(text="answered anyway"))
    resp = api.post(f"/instances/{iid}/chat", json={"message": "third"})
    assert resp.status_code == 200 and resp.json()["text"] == "answered anyway"
    history = api.get(f"/instances/{iid}/messages").json()
    assert history[: len(before)] == before
    assert not any(str(m.get("content", "")).startswith("Summary of the earlier conversation:") for m in history)
