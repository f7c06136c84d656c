"""The model request's body against the length of the conversation, in-process.

    .venv/bin/python -m benchmarks.bench_model_body [--lengths 10,100,1000] [--rounds 5]

A step's request carries the whole transcript. LiteLLM's OpenAI transform walks every message
on every call (`cache_control` keys, tool messages' images and tool references, user content
parts); regina/runtime/models/direct.py leaves text-only conversations out of that walk and
splices their JSON into the body (`_plain_openai_messages`), encoded as a whole list when the
caller gives only the messages, or joined from each message's JSON when it keeps them
(`ModelRequest.encoded`: the agent loop does, each message encoded once as it joins the
conversation). This measures `request_body` the three ways in alternating rounds on the same
messages (four tools, a transcript of user, assistant tool-call, tool-result and assistant
messages) and prints the medians and their ratios to the transform's.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from benchmarks.common import Table, show
from regina.providers import ModelTarget
from regina.runtime.messages import model_json
from regina.runtime.models import direct
from regina.runtime.models.parts import ModelRequest

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": f"tool_{i}",
            "description": "Does one thing",
            "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
        },
    }
    for i in range(4)
]
TURN: list[dict[str, Any]] = [
    {"role": "user", "content": "please read /notes.txt and summarise it in two lines"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "tool_0", "arguments": '{"path": "/notes.txt"}'}}
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "name": "tool_0", "content": "line one\nline two\n" * 20},
    {"role": "assistant", "content": "The notes say two things, twenty times over."},
]


def conversation(length: int) -> list[dict[str, Any]]:
    """A system message and `length - 1` messages of repeated turns."""
    return [{"role": "system", "content": "You are a careful assistant."}] + [
        dict(TURN[i % len(TURN)]) for i in range(length - 1)
    ]


def measure(lengths: list[int], rounds: int) -> Table:
    route = direct.route_for(ModelTarget("openai", "openai/gpt-4o", "sk-bench", "http://127.0.0.1:9/v1"))
    assert route is not None
    splice = direct._plain_openai_messages
    table = Table(
        "Model request body per step against the conversation's length (µs, median of rounds)",
        ["messages", "LiteLLM's transform walks them", "spliced, the list encoded", "spliced, each kept", "ratios"],
        conditions={"rounds": rounds, "model": "openai/gpt-4o", "tools": len(TOOLS)},
    )
    try:
        for length in lengths:
            messages = conversation(length)
            requests = {
                "walked": ModelRequest(messages, TOOLS, None),
                "listed": ModelRequest(messages, TOOLS, None),
                "kept": ModelRequest(messages, TOOLS, None, encoded=[model_json(m) for m in messages]),
            }
            times: dict[str, list[float]] = {side: [] for side in requests}
            reps = max(20, 20000 // length)
            for _ in range(rounds):
                for side, request in requests.items():
                    direct._plain_openai_messages = splice if side != "walked" else (lambda config, request: None)
                    start = time.perf_counter()
                    for _ in range(reps):
                        direct.request_body(route, request)
                    times[side].append((time.perf_counter() - start) / reps * 1e6)
            walked, listed, kept = (statistics.median(times[side]) for side in requests)
            table.add(
                length, f"{walked:.1f}", f"{listed:.1f}", f"{kept:.1f}", f"{listed / walked:.2f} / {kept / walked:.3f}"
            )
    finally:
        direct._plain_openai_messages = splice
    return table


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_model_body", description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", default="10,100,1000", help="conversation lengths (messages), comma-separated")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    show([measure([int(n) for n in args.lengths.split(",")], args.rounds)])


if __name__ == "__main__":
    main()
