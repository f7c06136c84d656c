"""PNG plots for docs/: latency and CPU against active instances, throughput against clients.

`make bench` calls `plot_scale` and `plot_throughput` with its tables; an A/B sitting can plot
its saved output (each block headed `=== round R side S …` and followed by the table's lines):

    .venv/bin/python -m benchmarks.plots scale ab-scale.txt docs/scale.png
    .venv/bin/python -m benchmarks.plots throughput ab-throughput.txt docs/throughput.png

Needs matplotlib (a dev dependency).
"""

from __future__ import annotations

import statistics
import sys
from collections import defaultdict
from pathlib import Path

Rows = list[list[float]]


def parse_ab(text: str) -> dict[str, list[Rows]]:
    """Side → one list of numeric rows per round, from saved A/B output."""
    out: dict[str, list[Rows]] = defaultdict(list)
    side = ""
    for line in text.splitlines():
        if line.startswith("=== "):
            side = line.split(" side ")[1].split()[0]
            out[side].append([])
        elif line.startswith("| ") and side and line[2:3].isdigit():
            cells = [c.strip().split(" ")[0].replace(",", "") for c in line.strip("|").split("|")]
            out[side][-1].append([float(c) if c not in ("nan", "") else float("nan") for c in cells])
    return out


def _medians(rounds: list[Rows], x: int, y: int) -> tuple[list[float], list[float]]:
    by_x: dict[float, list[float]] = defaultdict(list)
    for rows in rounds:
        for r in rows:
            by_x[r[x]].append(r[y])
    xs = sorted(by_x)
    return xs, [statistics.median(by_x[v]) for v in xs]


def _figure(series: dict[str, list[Rows]], x: int, panels: list[tuple[int, str]], xlabel: str, logx: bool) -> object:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8))
    for ax, (col, title) in zip(axes, panels, strict=True):
        for label, rounds in series.items():
            xs, ys = _medians(rounds, x, col)
            ax.plot(xs, ys, marker="o", label=label)
        if logx:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_scale(series: dict[str, list[Rows]], path: str) -> None:
    """bench_scale rows: overhead p50, worker CPU and Redis CPU per chat against instances."""
    panels = [(2, "sync chat overhead p50 (ms)"), (4, "worker CPU per chat (ms)"), (5, "Redis CPU per chat (ms)")]
    fig = _figure(series, 0, panels, "active idle instances on the worker", logx=True)
    fig.savefig(path, dpi=90)  # type: ignore[attr-defined]


def plot_throughput(series: dict[str, list[Rows]], path: str) -> None:
    """bench_throughput rows: chats/s and server CPU per chat against clients."""
    panels = [(1, "sync chats/s"), (5, "server CPU per chat (ms)")]
    fig = _figure(series, 0, panels, "concurrent clients", logx=True)
    fig.savefig(path, dpi=90)  # type: ignore[attr-defined]


def main(argv: list[str]) -> None:
    kind, source, target = argv
    series = parse_ab(Path(source).read_text())
    names = {"A": "A: 8df2eb0 (before)", "B": "B: after"}
    named = {names.get(k, k): v for k, v in series.items()}
    (plot_scale if kind == "scale" else plot_throughput)(named, target)


if __name__ == "__main__":
    main(sys.argv[1:])
