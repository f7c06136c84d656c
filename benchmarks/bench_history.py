"""A chat's cost against the length of the instance's conversation.

    .venv/bin/python -m benchmarks.bench_history [--levels 0,250,1000] [--chats 50] [--root TREE]

An instance lives long: its transcript grows to hundreds or thousands of messages. Every step
sends the whole transcript to the model, so some cost per step is bound to grow with it (the
model request's bytes); the rest of a step should not. This drives one instance through the
levels (two messages per chat: the user's and the answer) and measures `--chats` sequential
sync chats at each: worker CPU per chat (every thread's schedstat) and wall-clock latency.
`--root` runs the web and worker from another checkout (an A/B against an older commit).
"""

from __future__ import annotations

import argparse
import statistics
import time

from benchmarks.ab_chat import cpu_seconds
from benchmarks.common import Table, show, spawn, stack

WORDS = "some words of a user's message " * 8


def measure(levels: list[int], chats: int, root: str | None) -> Table:
    table = Table(
        "Chat cost against the conversation's length (one instance, sequential sync chats)",
        ["messages in the conversation", "worker CPU per chat (ms)", "latency p50 (ms)", "latency p99 (ms)"],
        conditions={"chats per level": chats, "root": root or "this checkout", "message": f"{len(WORDS)} chars"},
    )
    with stack(root=root) as st:
        api = st.client()
        iid = spawn(api)
        worker = st.worker.popen.pid
        messages = 0

        def chat(tag: str) -> float:
            start = time.perf_counter()
            api.post(f"/instances/{iid}/chat", json={"message": f"{tag} {WORDS}"}).raise_for_status()
            return (time.perf_counter() - start) * 1000

        for level in levels:
            while messages < level:
                chat("fill")
                messages += 2
            cpu = cpu_seconds(worker)
            walls = [chat("measured") for _ in range(chats)]
            per_chat = (cpu_seconds(worker) - cpu) / chats * 1000
            messages += 2 * chats
            walls.sort()
            table.add(
                level,
                f"{per_chat:.2f}",
                f"{statistics.median(walls):.2f}",
                f"{walls[int(0.99 * (len(walls) - 1))]:.2f}",
            )
    return table


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_history", description=__doc__.split("\n\n")[0])
    ap.add_argument("--levels", default="0,250,1000", help="conversation lengths (messages), ascending")
    ap.add_argument("--chats", type=int, default=50, help="measured chats per level")
    ap.add_argument("--root", help="run the web and worker from this checkout (an A/B against an older commit)")
    args = ap.parse_args()
    show([measure([int(n) for n in args.levels.split(",")], args.chats, args.root)])


if __name__ == "__main__":
    main()
