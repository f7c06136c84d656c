"""Compaction: token estimate, cut rules (never split a tool pair), summary + last N verbatim."""

from __future__ import annotations

from regina.runtime.compaction import (
    SUMMARY_PREFIX,
    estimate_tokens,
    find_cut,
    maybe_compact,
    render_transcript,
)
from regina.runtime.messages import Message, assistant, repair, tool_call, tool_result, user


def _history() -> list[Message]:
    return [
        user("u0 " * 50),  # 0
        assistant("a1"),  # 1
        user("u2"),  # 2
        assistant("", [tool_call("c1", "read_file", {"path": "/x"}), tool_call("c2", "ls", {})]),  # 3
        tool_result("c1", "read_file", "r1"),  # 4
        tool_result("c2", "ls", "r2"),  # 5
        assistant("a6"),  # 6
        user("u7"),  # 7
    ]


def test_estimate_is_characters_over_four() -> None:
    msgs = [user("abcd" * 10), assistant("", [tool_call("c", "f", "{}")])]
    assert estimate_tokens(msgs) == (40 + 1 + 2) // 4


def test_cut_never_starts_on_a_tool_result() -> None:
    h = _history()
    assert find_cut(h, 2) == 6
    assert find_cut(h, 3) == 3  # would start on result r2 → moved back to the assistant call
    assert find_cut(h, 4) == 3  # would start on result r1 → moved back too
    assert find_cut(h, 5) == 3
    assert find_cut(h, 0) == 8
    assert find_cut(h, 100) == 0


def test_summary_then_last_n_verbatim() -> None:
    h = _history()
    seen: list[list[Message]] = []

    def summarize(older: list[Message]) -> str:
        seen.append(older)
        return "  they talked  "

    out = maybe_compact(h, threshold=1, keep_last_n=2, summarize=summarize)
    assert out is not None
    assert seen == [h[:6]]
    assert out[0] == {"role": "user", "content": SUMMARY_PREFIX + "they talked"}
    assert out[1:] == h[6:]


def test_tool_pair_is_kept_whole_and_result_is_valid() -> None:
    h = _history()
    out = maybe_compact(h, threshold=1, keep_last_n=4, summarize=lambda older: f"{len(older)} msgs")
    assert out is not None
    assert out[0]["content"] == SUMMARY_PREFIX + "3 msgs"
    assert out[1:] == h[3:]
    assert repair(out) == (out, False)


def test_under_threshold_or_nothing_to_summarize_is_none() -> None:
    h = _history()
    calls: list[int] = []

    def summarize(older: list[Message]) -> str:
        calls.append(1)
        return "s"

    assert maybe_compact(h, threshold=estimate_tokens(h), keep_last_n=2, summarize=summarize) is None
    assert maybe_compact(h, threshold=1, keep_last_n=100, summarize=summarize) is None
    tools_only = h[3:6]  # the cut moves back to index 0: nothing older to summarize
    assert maybe_compact(tools_only, threshold=0, keep_last_n=1, summarize=summarize) is None
    assert calls == []


def test_render_transcript_is_plain_text() -> None:
    text = render_transcript(_history()[2:6])
    assert "[user] u2" in text
    assert '[assistant called tool read_file] {"path": "/x"}' in text
    assert "[tool result ls] r2" in text


def test_an_earlier_summary_alone_is_not_summarized_again() -> None:
    """When the kept messages alone are over the threshold, the only older message is the
    previous summary: summarizing it again at every step cost a model call and a rewrite each
    time and wore the summary down."""
    summary = user(SUMMARY_PREFIX + "what happened")
    kept = [
        assistant("", [tool_call("c1", "write_file", {"content": "x" * 2000})]),
        tool_result("c1", "write_file", "y" * 2000),
    ]
    asked: list[list[Message]] = []

    def summarize(older: list[Message]) -> str:
        asked.append(older)
        return "S2"

    assert maybe_compact([summary, *kept], 100, 2, summarize) is None
    assert asked == []
    # Anything else older than the kept messages is summarized as before.
    compacted = maybe_compact([summary, user("more"), *kept], 100, 2, summarize)
    assert compacted is not None and compacted[0]["content"] == SUMMARY_PREFIX + "S2"
