"""VFS read/write throughput per backend (4 KB files), in-process.

.venv/bin/python -m benchmarks.bench_vfs [--ops 2000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from regina.vfs import MemoryVFS, RealDirVFS, SQLiteVFS
from regina.vfs.base import VFS


def _rate(fn: object, ops: int) -> float:
    start = time.perf_counter()
    for i in range(ops):
        fn(i)  # type: ignore[operator]
    return ops / (time.perf_counter() - start)


def measure(ops: int) -> list[tuple[str, float, float, float]]:
    """(backend, writes/s, reads/s, appends/s) for 4 KB files."""
    payload = os.urandom(4096)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        backends: list[tuple[str, VFS]] = [
            ("sqlite NORMAL (default)", SQLiteVFS(os.path.join(tmp, "n.sqlite"), synchronous="NORMAL")),
            ("sqlite FULL", SQLiteVFS(os.path.join(tmp, "f.sqlite"), synchronous="FULL")),
            ("memory", MemoryVFS()),
            ("realdir", RealDirVFS(os.path.join(tmp, "root"))),
        ]
        for name, vfs in backends:
            vfs.mkdir("/d")
            writes = _rate(lambda i, v=vfs: v.write(f"/d/f{i % 200}.bin", payload), ops)
            reads = _rate(lambda i, v=vfs: v.read(f"/d/f{i % 200}.bin"), ops)
            appends = _rate(lambda i, v=vfs: v.append("/d/log.jsonl", b'{"role":"user","content":"hi"}\n'), ops)
            rows.append((name, writes, reads, appends))
            vfs.close()
    return rows


def main() -> None:
    """Print the table."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_vfs")
    ap.add_argument("--ops", type=int, default=2000)
    args = ap.parse_args()
    print(f"### VFS throughput, 4 KB files, {args.ops} ops each (ops/s)")
    print("| backend | write | read | append (32 B) |")
    print("|---|---|---|---|")
    for name, w, r, a in measure(args.ops):
        print(f"| {name} | {w:,.0f} | {r:,.0f} | {a:,.0f} |")


if __name__ == "__main__":
    main()
