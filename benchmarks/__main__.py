"""Run every benchmark and print a table per figure with its conditions.

    .venv/bin/python -m benchmarks [--quick] [--only chat,floor,...]   (names: ALL below)

`make bench` runs this. Results with their conditions go in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from benchmarks.common import ROOT, Table, machine, versions
from tests.harness.redis_server import redis_binary

ALL = [
    "chat",
    "floor",
    "profile",
    "stream",
    "lifecycle",
    "scale",
    "throughput",
    "start",
    "loop",
    "history",
    "body",
    "vfs",
    "isolation",
    "mcp",
]


def _redis_version() -> str:
    out = subprocess.run([redis_binary(), "--version"], capture_output=True, text=True).stdout
    return next((w.split("=", 1)[1] for w in out.split() if w.startswith("v=")), out.strip())


def _loop(quick: bool) -> list[Table]:
    """benchmarks/bench_loop.py (per-tool-step loop overhead) if it exposes main()."""
    from benchmarks import bench_loop

    if not hasattr(bench_loop, "main"):
        return []
    argv = ["bench_loop"] + (["--calls", "50", "--turns", "5"] if quick else [])
    buf = io.StringIO()
    saved = sys.argv
    sys.argv = argv
    try:
        with contextlib.redirect_stdout(buf):
            bench_loop.main()
    finally:
        sys.argv = saved
    t = Table(
        "Agent loop micro-benchmarks (benchmarks/bench_loop.py, in-process, fake LLM in-thread)",
        ["output"],
        conditions={"args": " ".join(argv[1:]) or "defaults"},
    )
    for line in buf.getvalue().splitlines():
        if line.strip():
            t.add(line)
    return [t]


def _plot(kind: str, tables: list[Table], quick: bool) -> None:
    """docs/<kind>.png from this run's table (matplotlib is a dev dependency); a `--quick` run's
    small-N plot goes to the temporary directory instead, leaving the docs' own."""
    from benchmarks import plots

    rows = [[float(c) if isinstance(c, int | float) else float("nan") for c in r] for r in tables[0].rows]
    target = str((Path(tempfile.gettempdir()) if quick else ROOT / "docs") / f"{kind}.png")
    (plots.plot_scale if kind == "scale" else plots.plot_throughput)({"this run": [rows]}, target)
    print(f"(plot: {target})", flush=True)


def _vfs_table(rows: list[tuple[str, float, float, float]]) -> Table:
    t = Table("VFS throughput, 4 KB files (ops/s)", ["backend", "write", "read", "append (32 B)"])
    for name, w, r, a in rows:
        t.add(name, f"{w:,.0f}", f"{r:,.0f}", f"{a:,.0f}")
    return t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks")
    ap.add_argument("--quick", action="store_true", help="smaller N (a smoke run, ~3 minutes)")
    ap.add_argument("--only", default=",".join(ALL), help="comma-separated subset of " + ",".join(ALL))
    args = ap.parse_args(argv)
    chosen = [x.strip() for x in args.only.split(",") if x.strip()]

    started = time.monotonic()
    header = {**machine(), "redis-server": _redis_version(), **versions(), "quick": args.quick}
    print("# Regina benchmarks\n" + "\n".join(f"- {k}: {v}" for k, v in header.items()) + "\n", flush=True)
    failures = 0
    verdicts = Table("Targets: every note above that names one", ["benchmark", "note"])
    for name in chosen:
        t0 = time.monotonic()
        print(f"## {name}\n", flush=True)
        try:
            if name == "chat":
                from benchmarks import bench_chat

                tables = bench_chat.run(args.quick)
            elif name == "floor":
                from benchmarks import bench_floor

                tables = bench_floor.run(100 if args.quick else 300)
            elif name == "profile":
                from benchmarks import profile_chat

                tables = profile_chat.run(60 if args.quick else 200, spy=not args.quick)
            elif name == "stream":
                from benchmarks import bench_stream

                tables = bench_stream.run(args.quick)
            elif name == "lifecycle":
                from benchmarks import bench_lifecycle

                tables = bench_lifecycle.run(args.quick)
            elif name == "scale":
                from benchmarks import bench_scale

                levels = [10, 100, 1000] if args.quick else [10, 100, 1000, 10000]
                tables = bench_scale.run(levels, 40 if args.quick else 100)
                _plot("scale", tables, args.quick)
            elif name == "throughput":
                from benchmarks import bench_throughput

                seconds = 4 if args.quick else 10
                tables = bench_throughput.run([1, 4, 16, 64], 0.0, seconds=seconds)
                tables += bench_throughput.run([64, 256], 0.2, seconds=seconds, timeline=True)
                tables.append(bench_throughput.by_workers([1, 2] if args.quick else [1, 2, 4], 16, seconds=seconds))
                _plot("throughput", tables[:1], args.quick)
            elif name == "start":
                from benchmarks import bench_start

                tables = bench_start.run(1 if args.quick else 3, [1, 2])
            elif name == "loop":
                tables = _loop(args.quick)
            elif name == "history":
                from benchmarks import bench_history

                tables = [bench_history.measure([0, 1000], 30 if args.quick else 50, None)]
            elif name == "body":
                from benchmarks import bench_model_body

                tables = [bench_model_body.measure([10, 100, 1000], 3 if args.quick else 5)]
            elif name == "vfs":
                from benchmarks import bench_vfs

                tables = [_vfs_table(bench_vfs.measure(500 if args.quick else 2000))]
            elif name == "mcp":
                from benchmarks import bench_mcp

                tables = bench_mcp.run(args.quick)
            elif name == "isolation":
                from benchmarks import bench_isolation

                tables = bench_isolation.run(args.quick)
            else:
                raise SystemExit(f"unknown benchmark {name!r}; choose from {', '.join(ALL)}")
        except Exception:
            failures += 1
            print(f"benchmark {name} FAILED:\n{traceback.format_exc()}", flush=True)
            continue
        for t in tables:
            t.print()
            verdicts.rows.extend([name, n] for n in t.notes if "target" in n)
        print(f"({name}: {time.monotonic() - t0:.0f} s)\n", flush=True)
    verdicts.print()
    print(f"(all: {time.monotonic() - started:.0f} s, {failures} failed)", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    sys.exit(main())
