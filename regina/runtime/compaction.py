"""Context compaction (SPEC §5): summarize older messages once the estimate passes a threshold.

After compaction the history is ONE summary message followed by the last `keep_last_n` messages
verbatim. The cut never separates tool results from the assistant message that called them, so
the compacted transcript stays valid. The summary is a `user` message: every provider accepts
it anywhere (a mid-conversation `system` message is not portable), and LiteLLM merges it with a
following user message for providers that need strict alternation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from regina.runtime.messages import Message, text_of

__all__ = [
    "SUMMARY_PREFIX",
    "estimate_tokens",
    "message_chars",
    "find_cut",
    "maybe_compact",
    "render_transcript",
]

SUMMARY_PREFIX = "Summary of the earlier conversation:\n"


def message_chars(msg: Message) -> int:
    """Characters of a message's text and tool-call names and arguments."""
    n = len(text_of(msg))
    for tc in msg.get("tool_calls") or ():
        fn = tc.get("function") or {}
        n += len(str(fn.get("name", ""))) + len(str(fn.get("arguments", "")))
    return n


def estimate_tokens(msgs: Sequence[Message]) -> int:
    """Estimated tokens: characters of contents and tool-call arguments, divided by 4."""
    return sum(message_chars(m) for m in msgs) // 4


def find_cut(msgs: Sequence[Message], keep_last_n: int) -> int:
    """Index of the first kept message: `len - keep_last_n`, moved earlier so that the kept
    part never starts with a tool result (whose assistant call would be summarized away)."""
    cut = max(0, len(msgs) - max(0, keep_last_n))
    while 0 < cut < len(msgs) and msgs[cut].get("role") == "tool":
        cut -= 1
    return cut


def maybe_compact(
    msgs: Sequence[Message],
    threshold: int,
    keep_last_n: int,
    summarize: Callable[[list[Message]], str],
) -> list[Message] | None:
    """Compacted history, or None when under `threshold` or when there is nothing to summarize
    (nothing older than the last `keep_last_n` messages, or only an earlier summary).

    `summarize(older)` returns the summary text (the loop calls the model for it).
    """
    if estimate_tokens(msgs) <= threshold:
        return None
    cut = find_cut(msgs, keep_last_n)
    if cut <= 0 or (cut == 1 and text_of(msgs[0]).startswith(SUMMARY_PREFIX)):
        # Nothing older than the kept messages but an earlier summary: summarizing it again
        # would cost a model call and a rewrite at every step (the kept part alone is over the
        # threshold) and wear the summary down each time.
        return None
    older = list(msgs[:cut])
    summary = summarize(older).strip()
    return [{"role": "user", "content": SUMMARY_PREFIX + summary}, *msgs[cut:]]


def render_transcript(msgs: Sequence[Message], max_chars_per_message: int = 4000) -> str:
    """Plain-text rendering of messages for a summarization prompt (no tool-call structure,
    so any provider accepts it)."""
    lines: list[str] = []
    for m in msgs:
        role = m.get("role", "?")
        text = text_of(m)
        if len(text) > max_chars_per_message:
            text = text[:max_chars_per_message] + " …[truncated]"
        if role == "tool":
            lines.append(f"[tool result {m.get('name', '')}] {text}")
            continue
        if text:
            lines.append(f"[{role}] {text}")
        for tc in m.get("tool_calls") or ():
            fn = tc.get("function") or {}
            lines.append(f"[{role} called tool {fn.get('name', '')}] {fn.get('arguments', '')}")
    return "\n".join(lines)
