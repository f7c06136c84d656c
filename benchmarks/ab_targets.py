"""Issue 16's ratio targets in one sitting: this checkout (B) against an older one (A).

    .venv/bin/python -m benchmarks.ab_targets ROOT_A [--pairs 3] [--quick]

The targets compare two versions measured on the same machine in the same sitting: a shared VM's
speed moves between sittings (8df2eb0 measured 4.6 ms of server CPU per chat in one, 11.9 ms in
another), and the ratios with it. This runs `bench_throughput` (16 clients, 0 ms model, two
workers and two web processes), `bench_chat` and `bench_stream` for A and B alternately, A first,
`--pairs` times, and prints every run's figure, the ratio of B's median to A's and the verdict.
Throughput is also measured for A as the issue measured it — one worker process and two web
processes, the deployment 8df2eb0's `regina up` and docs gave: the issue counts using both
cores as part of the gain ("the docs should run one worker process per core"), so its 3× is
against that; the same-deployment ratio is shown beside it.
ROOT_A is a checkout of the older commit (`git worktree add /work/base 8df2eb0`); both sides run
with this checkout's benchmark files and virtualenv.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from benchmarks import bench_chat, bench_stream, bench_throughput
from benchmarks.common import Table, machine, show

Figures = dict[str, float]
AS_ISSUED = "chats/s, A with 1 worker + 2 web"


def _cell(table: Table, row: str, column: str) -> float:
    """The number in `table` at the row whose first cell is `row`, under `column`."""
    at = table.columns.index(column)
    for cells in table.rows:
        if str(cells[0]) == row:
            return float(cells[at])
    raise LookupError(f"no row {row!r} in {table.title!r}")


def throughput(root: str | None, quick: bool) -> Figures:
    seconds = 4 if quick else 8
    (table, *_) = bench_throughput.run([16], 0.0, workers=2, web_procs=2, seconds=seconds, root=root)
    figures = {
        "chats/s": _cell(table, "16", "chats/s"),
        "server CPU per chat (ms)": _cell(table, "16", "server CPU / chat (ms)"),
    }
    if root is not None:  # A: also as the issue measured it
        (table, *_) = bench_throughput.run([16], 0.0, workers=1, web_procs=2, seconds=seconds, root=root)
        figures[AS_ISSUED] = _cell(table, "16", "chats/s")
    return figures


def chat(root: str | None, quick: bool) -> Figures:
    table = next(t for t in bench_chat.run(quick=quick, root=root) if t.title.startswith("Sync chat latency"))
    p50 = _cell(table, "raw httpx POST", "system − this, p50")
    p99 = _cell(table, "raw httpx POST", "system − this, p99")
    return {"sync overhead p50 (ms)": p50, "sync overhead p99 / own p50": p99 / p50}


def stream(root: str | None, quick: bool) -> Figures:
    tables = bench_stream.run(quick=quick, root=root)
    table = next(t for t in tables if t.title.startswith("Time to first stream event"))
    return {
        "first stream event overhead p50 (ms)": _cell(table, "overhead (system − direct)", "p50"),
        "last of 20 deltas − first, p50 (ms)": _cell(table, "system: last of 20 text-deltas − first", "p50"),
    }


@dataclass(frozen=True)
class Target:
    """A figure's target: on B's median over A's (`ratio`), or on B's median itself (`most`)."""

    figure: str
    wording: str
    ratio: float | None = None  # B / A at most this (or at least, with `higher`)
    most: float | None = None  # B at most this
    higher: bool = False  # a larger figure is better (throughput)
    a_figure: str | None = None  # compare B's `figure` with this figure of A's

    def verdict(self, a: float, b: float) -> str:
        ok = True
        if self.ratio is not None:
            ok = b / a >= self.ratio if self.higher else b / a <= self.ratio
        if self.most is not None:
            ok = ok and b <= self.most
        return "meets" if ok else "MISSES"


TARGETS = [
    Target("chats/s", "≥ 3× A", ratio=3.0, higher=True, a_figure=AS_ISSUED),
    Target("chats/s", "≥ 3× A, both with 2 workers + 2 web", ratio=3.0, higher=True),
    Target("server CPU per chat (ms)", "≤ A / 3 and ≤ 4 ms", ratio=1 / 3, most=4.0),
    Target("sync overhead p50 (ms)", "≤ A / 2", ratio=0.5),
    Target("sync overhead p99 / own p50", "≤ 1.5", most=1.5),
    Target("first stream event overhead p50 (ms)", "≤ A / 2", ratio=0.5),
    Target("last of 20 deltas − first, p50 (ms)", "≤ 3 ms", most=3.0),
]


@dataclass
class Runs:
    """Every run's figures, per side."""

    a: dict[str, list[float]] = field(default_factory=dict)
    b: dict[str, list[float]] = field(default_factory=dict)

    def add(self, side: str, figures: Figures) -> None:
        into = self.a if side == "A" else self.b
        for name, value in figures.items():
            into.setdefault(name, []).append(value)


def measure(root_a: str, pairs: int, quick: bool) -> Table:
    runs = Runs()
    benches: list[Callable[[str | None, bool], Figures]] = [throughput, chat, stream]
    started = time.monotonic()
    for bench in benches:
        for n in range(pairs):
            for side, root in (("A", root_a), ("B", None)):
                print(f"{bench.__name__} {side} {n + 1}/{pairs} ({time.monotonic() - started:.0f} s)", flush=True)
                runs.add(side, bench(root, quick))
    table = Table(
        "Issue 16's targets: B (this checkout) against A, alternating in one sitting",
        ["figure", "A runs", "B runs", "B / A (medians)", "target", "verdict"],
        conditions={**machine(), "A": root_a, "pairs": pairs, "quick": quick},
    )
    for target in TARGETS:
        a, b = runs.a[target.a_figure or target.figure], runs.b[target.figure]
        ma, mb = statistics.median(a), statistics.median(b)
        table.add(
            f"{target.figure} (B, 2 workers + 2 web) against {target.a_figure}" if target.a_figure else target.figure,
            " / ".join(f"{x:.2f}" for x in a),
            " / ".join(f"{x:.2f}" for x in b),
            f"{mb / ma:.2f}×" if target.ratio is not None else "—",
            target.wording,
            target.verdict(ma, mb),
        )
    return table


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.ab_targets", description=__doc__.split("\n\n")[0])
    ap.add_argument("root_a", help="checkout of the older commit (A)")
    ap.add_argument("--pairs", type=int, default=3, help="A/B pairs of each benchmark")
    ap.add_argument("--quick", action="store_true", help="the benchmarks' quick sizes (a smoke run, not a verdict)")
    args = ap.parse_args(argv)
    show([measure(args.root_a, args.pairs, args.quick)])


if __name__ == "__main__":
    main()
