"""Conversation messages: builders, JSONL with torn lines, repair (SPEC §12), Session persistence."""

from __future__ import annotations

import json

from regina.runtime.compaction import message_chars
from regina.runtime.messages import (
    OUTCOME_UNKNOWN,
    Message,
    assistant,
    for_model,
    from_jsonl,
    model_json,
    repair,
    to_jsonl,
    tool_call,
    tool_result,
    user,
    utf8_safe,
)
from regina.runtime.session import SESSION_PATH, Session
from regina.vfs import MemoryVFS


def _call(cid: str, name: str = "read_file") -> dict[str, object]:
    return tool_call(cid, name, {"path": "/a"})


def test_builders_make_openai_format() -> None:
    a = assistant("", [_call("c1")])
    assert a == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "read_file", "arguments": '{"path": "/a"}'}}
        ],
    }
    assert tool_result("c1", "read_file", {"x": 1}) == {
        "role": "tool",
        "tool_call_id": "c1",
        "name": "read_file",
        "content": '{"x": 1}',
    }
    assert tool_result("c1", "read_file", "plain")["content"] == "plain"
    assert user("hi", runId="r") == {"role": "user", "content": "hi", "runId": "r"}


def test_jsonl_round_trip_and_torn_last_line() -> None:
    msgs = [user("héllo"), assistant("a\nb"), user("x")]
    data = to_jsonl(msgs)
    assert data.count(b"\n") == 3
    assert from_jsonl(data) == msgs
    torn = data + b'{"role":"assistant","content":"half'
    assert from_jsonl(torn) == msgs
    assert from_jsonl(b"") == []
    assert from_jsonl(b"garbage\n[1,2]\n" + data) == msgs


def test_repair_adds_outcome_unknown_for_missing_results() -> None:
    msgs = [user("go"), assistant("", [_call("c1"), _call("c2")]), tool_result("c1", "read_file", "ok")]
    fixed, changed = repair(msgs)
    assert changed
    assert fixed[:3] == msgs
    assert fixed[3]["role"] == "tool" and fixed[3]["tool_call_id"] == "c2"
    assert json.loads(fixed[3]["content"]) == OUTCOME_UNKNOWN
    assert len(fixed) == 4


def test_repair_drops_orphans_and_duplicates_and_orders_results() -> None:
    msgs = [
        tool_result("zz", "x", "orphan at start"),
        user("go"),
        assistant("", [_call("c1"), _call("c2")]),
        tool_result("c2", "read_file", "two"),
        tool_result("c1", "read_file", "one"),
        tool_result("c1", "read_file", "dup"),
        tool_result("c9", "read_file", "unknown id"),
        user("more"),
        tool_result("c1", "read_file", "late orphan"),
    ]
    fixed, changed = repair(msgs)
    assert changed
    assert [(m["role"], m.get("tool_call_id"), m["content"]) for m in fixed] == [
        ("user", None, "go"),
        ("assistant", None, ""),
        ("tool", "c1", "one"),
        ("tool", "c2", "two"),
        ("user", None, "more"),
    ]


def test_repair_leaves_a_valid_transcript_alone() -> None:
    msgs = [user("go"), assistant("", [_call("c1")]), tool_result("c1", "read_file", "ok"), assistant("done")]
    fixed, changed = repair(msgs)
    assert not changed and fixed == msgs


def test_for_model_strips_metadata_without_touching_the_original() -> None:
    msgs = [user("go", runId="r1", ts=1.0)]
    assert for_model(msgs) == [{"role": "user", "content": "go"}]
    assert msgs[0]["runId"] == "r1"


def test_session_appends_incrementally_and_recovers_from_a_torn_line() -> None:
    vfs = MemoryVFS()
    s = Session(vfs)
    assert s.load() == []
    s.append(user("a"))
    s.append(assistant("b"), user("c"))
    assert vfs.read("/.session/messages.jsonl") == to_jsonl([user("a"), assistant("b"), user("c")])
    assert Session(vfs).messages == [user("a"), assistant("b"), user("c")]

    vfs.append("/.session/messages.jsonl", b'{"role":"user","con')  # a crash mid-append
    s2 = Session(vfs)
    assert s2.messages == [user("a"), assistant("b"), user("c")]
    s2.append(user("d"))
    assert Session(vfs).messages == [user("a"), assistant("b"), user("c"), user("d")]


def test_session_rewrite_and_repair() -> None:
    vfs = MemoryVFS()
    s = Session(vfs)
    s.append(user("go"), assistant("", [_call("c1")]))  # crashed before the tool returned
    assert s.repair()
    again = Session(vfs).messages
    assert again[-1]["tool_call_id"] == "c1" and json.loads(again[-1]["content"]) == OUTCOME_UNKNOWN
    assert not Session(vfs).repair()
    s.rewrite([user("only")])
    assert Session(vfs).messages == [user("only")]


def test_session_model_view_follows_appends_rewrites_and_reloads() -> None:
    vfs = MemoryVFS()
    s = Session(vfs)
    s.append(user("hello", runId="run-1"), assistant("hi there", [tool_call("c1", "read", {"path": "/x"})], ts=1.0))

    def expected(session: Session) -> tuple[list[Message], int]:
        return for_model(session.messages), sum(message_chars(m) for m in session.messages)

    assert s.model_view() == expected(s)
    first, _ = s.model_view()
    s.append(tool_result("c1", "read", "contents"), user("more"))
    assert s.model_view() == expected(s)
    assert s.model_view()[0] is first  # extended in place, not rebuilt
    assert all("runId" not in m and "ts" not in m for m in s.model_view()[0])
    s.rewrite([user("only")])
    assert s.model_view() == ([{"role": "user", "content": "only"}], len("only"))
    vfs.append(SESSION_PATH, to_jsonl([assistant("from another writer")]))
    s.invalidate()
    assert s.model_view() == expected(s)
    assert len(s.model_view()[0]) == 2


def test_model_json_is_a_messages_json_when_it_can_go_out_as_it_is() -> None:
    plain = [
        user('text with "quotes", ünïcode and a "content":[1] spelled inside'),
        assistant(None, [tool_call("c1", "read", {"path": "/x"})]),
        tool_result("c1", "read", '{"cache_control": "only a string"}'),
    ]
    for m in for_model(plain):
        encoded = model_json(m)
        assert encoded is not None and json.loads(encoded) == m
    assert model_json({"role": "user", "content": [{"type": "text", "text": "a part"}]}) is None
    assert model_json({"role": "user", "content": "x", "cache_control": {"type": "ephemeral"}}) is None
    assert model_json({"role": "user", "content": {"not": "text"}}) is None
    assert model_json({"role": "user", "content": object()}) is None  # not JSON data


def test_model_json_keeps_no_more_memory_than_its_bytes() -> None:
    """They live as long as the conversation: orjson's own bytes hold 4 KB for a short message."""
    import tracemalloc

    msgs = [user(f"a short message {i}") for i in range(200)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [model_json(m) for m in msgs]
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert all(k is not None for k in kept)
    assert held / len(kept) < 200, held / len(kept)  # ≈ 80 bytes each and the list


def test_session_model_json_follows_the_model_view() -> None:
    vfs = MemoryVFS()
    s = Session(vfs)
    s.append(user("hello", runId="run-1"), assistant("hi", [tool_call("c1", "read", {"path": "/x"})], ts=1.0))

    def expected(session: Session) -> list[bytes | None]:
        return [model_json(m) for m in session.model_view()[0]]

    first = s.model_json()
    assert first == expected(s) and len(first) == 2
    s.append(tool_result("c1", "read", "contents"), user("more"))
    assert s.model_json() is first and first == expected(s)  # extended, not rebuilt
    s.rewrite([user("only")])
    assert s.model_json() == [b'{"role":"user","content":"only"}']
    vfs.append(SESSION_PATH, to_jsonl([assistant("from another writer")]))
    s.invalidate()
    assert s.model_json() == expected(s) and len(s.model_json()) == 2


def test_session_repair_checks_only_the_appended_tail_with_the_same_result() -> None:
    """Random transcripts appended in chunks, repaired between them: the same messages as a
    repair of the whole history each time (the incremental check's split is exact)."""
    import random

    rng = random.Random(7)

    def chunk(n: int) -> list[Message]:
        out: list[Message] = []
        for _ in range(n):
            kind = rng.choice(["user", "assistant", "calls", "tool", "calls"])
            if kind == "user":
                out.append(user(f"u{rng.random():.3f}"))
            elif kind == "assistant":
                out.append(assistant(f"a{rng.random():.3f}"))
            elif kind == "calls":
                ids = [f"c{rng.randrange(50)}" for _ in range(rng.randint(1, 2))]
                out.append(assistant(None, [_call(cid) for cid in ids]))
                for cid in rng.sample(ids, k=rng.randint(0, len(ids))):  # some answered, any order
                    out.append(tool_result(cid, "read_file", "ok"))
            else:  # a stray result
                out.append(tool_result(f"c{rng.randrange(50)}", "read_file", "stray"))
        return out

    for _ in range(200):
        session = Session(MemoryVFS())
        reference: list[Message] = []
        for _ in range(rng.randint(1, 6)):
            part = chunk(rng.randint(0, 5))
            session.append(*part)
            reference = repair(reference + part)[0]
            session.repair()
            assert session.messages == reference
            assert Session(session.vfs).messages == reference


def test_lone_surrogates_from_a_tool_or_the_model_become_replacement_characters() -> None:
    """Half a surrogate pair (a JSON "\\ud83d" escape, a JavaScript string cut in two) cannot be
    written as UTF-8: the transcript's append failed and the turn with it."""
    cut = "page text cut mid-emoji: \ud83d"
    assert utf8_safe(cut) == "page text cut mid-emoji: \ufffd"
    assert utf8_safe("whole: \U0001f600 é") == "whole: \U0001f600 é"
    msgs = [
        assistant("half \udc00 an answer"),
        tool_result("c1", "web", cut),
        tool_result("c2", "web", {"text": cut}),
    ]
    saved = from_jsonl(to_jsonl(msgs))  # raised UnicodeEncodeError
    assert [m["content"] for m in saved] == [
        "half \ufffd an answer",
        "page text cut mid-emoji: \ufffd",
        json.dumps({"text": "page text cut mid-emoji: \ufffd"}, ensure_ascii=False),
    ]
